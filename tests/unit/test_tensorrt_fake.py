"""TensorRTBackend against fakes of tensorrt (10 and 11) and pycuda whose names are checked
against each version's real API."""

from __future__ import annotations

import importlib
import inspect
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import onnx
import pytest

import fakecuda
import fakes
from detserve.backends.onnxruntime import OnnxRuntimeBackend
from detserve.config import Settings
from detserve.errors import ModelLoadError
from detserve.inference.detector import Detector, Limits
from detserve.service.artifacts import ArtifactStore
from detserve.service.demo import build_blob_detector
from detserve.service.packages import read_package
from support import blobs_image, dynamic_batch_model, failing_model, image_bytes

# Names of the TensorRT Python API, one list per major version, from that version's documentation:
# docs.nvidia.com/deeplearning/tensorrt/10.x and /11.0.0/_static/python-api (Core/Logger,
# Core/Builder, Core/BuilderConfig, Core/Engine, Core/ExecutionContext, Core/Runtime,
# Core/OptimizationProfile, Core/ProgressMonitor, Graph/Network, Parsers/Onnx/pyOnnx,
# FoundationalTypes/DataType) and the 10.x-to-11.x Python migration guide's "Removed Python APIs"
# (BuilderFlag.FP16, Builder.platform_has_fast_fp16, ICudaEngine.device_memory_size); pycuda.driver
# from documen.tician.de/pycuda/driver.
_BOTH = {
    "__version__", "ILogger", "ILogger.Severity", "ILogger.Severity.INTERNAL_ERROR",
    "ILogger.Severity.ERROR", "ILogger.Severity.WARNING", "ILogger.Severity.INFO",
    "ILogger.Severity.VERBOSE", "ILogger.log", "Logger", "Logger.ERROR", "Logger.WARNING",
    "Logger.INFO", "Logger.min_severity", "Logger.log", "Logger.Severity",
    "Logger.Severity.INTERNAL_ERROR", "Logger.Severity.ERROR", "Logger.Severity.WARNING",
    "Logger.Severity.INFO", "Logger.Severity.VERBOSE", "IProgressMonitor",
    "MemoryPoolType", "MemoryPoolType.WORKSPACE",
    "TensorIOMode", "TensorIOMode.INPUT", "TensorIOMode.OUTPUT", "DataType", "DataType.FLOAT",
    "DataType.HALF", "DataType.UINT8", "DataType.INT64", "nptype",
    "Builder", "Builder.create_network", "Builder.create_builder_config",
    "Builder.create_optimization_profile", "Builder.build_serialized_network", "Builder.logger",
    "OnnxParser", "OnnxParser.parse", "OnnxParser.num_errors", "OnnxParser.get_error",
    "INetworkDefinition.get_input", "INetworkDefinition.num_inputs", "ITensor.name", "ITensor.shape",
    "IBuilderConfig.set_memory_pool_limit", "IBuilderConfig.set_flag",
    "IBuilderConfig.add_optimization_profile", "IBuilderConfig.progress_monitor",
    "IOptimizationProfile.set_shape",
    "Runtime", "Runtime.deserialize_cuda_engine", "Runtime.logger",
    "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_dtype", "ICudaEngine.get_tensor_shape",
    "ICudaEngine.create_execution_context", "ICudaEngine.device_memory_size_v2",
    "IExecutionContext.engine", "IExecutionContext.set_input_shape",
    "IExecutionContext.get_tensor_shape", "IExecutionContext.set_tensor_address",
    "IExecutionContext.execute_async_v3",
}
REAL_TENSORRT = {
    10: _BOTH | {"BuilderFlag", "BuilderFlag.FP16", "Builder.platform_has_fast_fp16",
                 "ICudaEngine.device_memory_size"},
    11: _BOTH,
}
REAL_PYCUDA = {
    "init", "Device", "Device.count", "Device.name", "Device.compute_capability",
    "Device.retain_primary_context", "Context", "Context.push", "Context.pop",
    "mem_alloc", "mem_get_info", "DeviceAllocation.free", "pagelocked_empty", "memcpy_htod_async",
    "memcpy_dtoh_async", "Stream", "Stream.handle", "Stream.synchronize",
}
# helpers of the fake itself, not imitations of real names
FAKE_ONLY = {"Builder.builds", "Context.depth", "ICudaEngine.profile", "ICudaEngine.header",
             "ICudaEngine.session", "ICudaEngine.modes", "ICudaEngine.dtypes", "ICudaEngine.dims",
             "ICudaEngine.names", "IExecutionContext.shapes", "IExecutionContext.addresses",
             "OnnxParser.network", "OnnxParser.errors", "DeviceAllocation.address",
             "DeviceAllocation.data", "Stream.synchronized", "Device.number",
             "INetworkDefinition.model", "INetworkDefinition.inputs", "IBuilderConfig.flags",
             "IBuilderConfig.pools", "IBuilderConfig.profiles", "IOptimizationProfile.shapes",
             "Runtime.engine_class"}
MAJORS = sorted(fakes.VERSIONS)


def _class_names(prefix: str, cls: type) -> set[str]:
    names = set()
    for klass in cls.__mro__[:-1]:  # the class and its bases, not object
        for attr, value in vars(klass).items():
            if attr.startswith("_"):
                continue
            names.add(f"{prefix}.{attr}")
            if inspect.isclass(value) and value.__qualname__.startswith(klass.__qualname__ + "."):
                names |= _class_names(f"{prefix}.{attr}", value)  # a nested class: an enum
    return names


def _public_names(module) -> set[str]:
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") and name != "__version__":
            continue
        names.add(name)
        if inspect.isclass(value):
            names |= _class_names(name, value)
    return names


@pytest.mark.parametrize("major", MAJORS)
def test_fake_names_exist_in_the_real_api(major):
    mods = fakes.modules(fakes.VERSIONS[major])
    for module_name, real in (("tensorrt", REAL_TENSORRT[major]), ("pycuda.driver", REAL_PYCUDA)):
        invented = _public_names(mods[module_name]) - real - FAKE_ONLY
        assert not invented, f"{module_name} {major} fake defines names the real API lacks: {invented}"
    # and the classes the backend reaches through returned objects are real ones too
    engine = mods["tensorrt"].Runtime.engine_class
    for name, cls in (("INetworkDefinition", fakes.INetworkDefinition), ("ITensor", fakes.ITensor),
                      ("IBuilderConfig", fakes.IBuilderConfig), ("ICudaEngine", engine),
                      ("IOptimizationProfile", fakes.IOptimizationProfile),
                      ("IExecutionContext", fakes.IExecutionContext),
                      ("DeviceAllocation", fakecuda.DeviceAllocation)):
        invented = _class_names(name, cls) - REAL_TENSORRT[major] - REAL_PYCUDA - FAKE_ONLY
        assert not invented, f"{name} ({major}) has names the real API lacks: {invented}"


def test_eleven_lacks_what_eleven_removed():
    trt = fakes.modules(fakes.VERSIONS[11])["tensorrt"]
    assert not hasattr(trt, "BuilderFlag") and not hasattr(trt.Builder, "platform_has_fast_fp16")
    assert not hasattr(trt.Runtime.engine_class, "device_memory_size")


@pytest.fixture(params=MAJORS, ids=lambda m: f"tensorrt{m}")
def trt_backend(request, monkeypatch):
    for name, module in fakes.modules(fakes.VERSIONS[request.param]).items():
        monkeypatch.setitem(sys.modules, name, module)
    _forget_gpu_modules(monkeypatch)
    module = importlib.import_module("detserve_worker_gpu.tensorrt")
    importlib.import_module("detserve_worker_gpu.contexts")._CudaContext._by_pid.clear()
    yield module
    _forget_gpu_modules(monkeypatch)


def _forget_gpu_modules(monkeypatch):
    for name in [n for n in sys.modules if n.startswith("detserve_worker_gpu.")]:
        monkeypatch.delitem(sys.modules, name, raising=False)


def _spec(model: bytes):
    package = read_package(model, None, max_bytes=1 << 30)
    return package, {"input": package.input, "output": package.output}


def _load(trt_backend, model: bytes, tmp_path, **settings):
    package, spec = _spec(model)
    backend = trt_backend.TensorRTBackend.from_package(
        package.onnx_bytes, spec, settings=replace(Settings(), **settings),
        artifacts=ArtifactStore(tmp_path))
    return package, spec, backend


def test_outputs_match_onnx_runtime(trt_backend, tmp_path):
    package, spec, backend = _load(trt_backend, build_blob_detector().SerializeToString(), tmp_path)
    assert backend.max_batch == 1  # the demo's batch is fixed at 1: no profile, no batching
    reference = OnnxRuntimeBackend.from_package(package.onnx_bytes, spec)
    limits = Limits(1 << 30, 1 << 30)
    image = blobs_image([("red", 20, 20, 80, 80)])
    got = Detector(backend, {"labels": package.labels, **spec}, limits).infer(image)
    want = Detector(reference, {"labels": package.labels, **spec}, limits).infer(image)
    assert got == want and got.classes
    assert fakecuda.Context.depth == 0


def test_concurrent_callers_of_a_static_engine_each_get_their_own_answer(trt_backend, tmp_path):
    # given a static-batch engine (batch 1, no batcher) and 16 different images
    package, spec, backend = _load(trt_backend, dynamic_batch_model(batch=1), tmp_path,
                                   worker_concurrency=16)
    assert backend.max_batch == 1
    version = {"labels": package.labels, **spec}
    limits = Limits(1 << 30, 1 << 30)
    detector = Detector(backend, version, limits)
    reference = Detector(OnnxRuntimeBackend.from_package(package.onnx_bytes, spec), version, limits)
    rng = np.random.default_rng(7)
    images = [image_bytes(64, 64, color=tuple(int(c) for c in rng.integers(0, 256, 3)))
              for _ in range(16)]
    want = [reference.infer(img) for img in images]
    start = threading.Barrier(16)

    def caller(index: int) -> int:
        start.wait()
        return sum(detector.infer(images[index]) != want[index] for _ in range(30))

    # when 16 threads call it at once, 480 requests in all
    with ThreadPoolExecutor(16) as pool:
        wrong = sum(pool.map(caller, range(16)))
    # then every request got its own image's answer, on more than one execution context at once
    assert wrong == 0, f"{wrong} of 480 answers belonged to another image"
    assert 1 < backend.pool.busy_peak <= backend.pool.created <= 16
    assert fakecuda.Context.depth == 0


def test_the_pool_is_bounded_by_device_memory(trt_backend, tmp_path, monkeypatch):
    per_context = (8 << 20) + 3 * 64 * 64 * 4 + 7 * 4 * 4  # activations, input, output
    monkeypatch.setattr(fakecuda, "FREE_MEMORY", 2 * 3 * per_context + 100)  # half of it fits three
    *_, backend = _load(trt_backend, dynamic_batch_model(batch=1), tmp_path, worker_concurrency=16)
    assert backend.pool.size == 3
    assert backend.describe()["contexts"] == 3


def test_a_dynamic_engine_has_one_context_for_its_batcher(trt_backend, tmp_path):
    *_, backend = _load(trt_backend, dynamic_batch_model(), tmp_path, worker_concurrency=16,
                        trt_profile="1,4,16")
    assert backend.max_batch == 16 and backend.pool.size == 1


def test_engine_cache_reuse_and_invalidation(trt_backend, tmp_path):
    package, spec = _spec(build_blob_detector().SerializeToString())
    store = ArtifactStore(tmp_path)
    settings = Settings()
    build = lambda s=settings, sha="b" * 64: trt_backend.TensorRTBackend.from_package(  # noqa: E731
        package.onnx_bytes, spec, settings=s, artifacts=store, sha256=sha)
    before = fakes.Builder.builds
    first = build()
    again = build()  # a redeploy, a restart or a second worker of the same GPU: reused
    assert fakes.Builder.builds == before + 1
    assert again.describe()["precision"] == first.describe()["precision"]
    build(replace(settings, trt_precision="fp32"))
    build(sha="c" * 64)
    assert fakes.Builder.builds == before + 3
    assert len(list((tmp_path / "engines").iterdir())) == 3


def test_cache_key_covers_every_input(trt_backend, monkeypatch):
    engines = sys.modules["detserve_worker_gpu.engines"]
    key = engines.engine_key
    profile = engines.Profile()
    base = key("d" * 64, "fp16", profile)
    assert base == key("d" * 64, "fp16", profile)
    assert base != key("e" * 64, "fp16", profile)
    assert base != key("d" * 64, "fp32", profile)
    assert base != key("d" * 64, "fp16", engines.Profile(1, 4, 16))
    assert base != key("d" * 64, "fp16", None)
    version = engines.trt.__version__
    monkeypatch.setattr(engines.trt, "__version__", version + ".1")
    assert base != key("d" * 64, "fp16", profile)
    monkeypatch.setattr(engines.trt, "__version__", version)
    monkeypatch.setattr(engines, "MAJOR", engines.MAJOR + 1)
    assert base != key("d" * 64, "fp16", profile)
    monkeypatch.setattr(engines, "MAJOR", engines.MAJOR - 1)
    monkeypatch.setattr(fakecuda.Device, "compute_capability", lambda self: (8, 9))
    assert base != key("d" * 64, "fp16", profile)


def _half_weights(model: bytes) -> bytes:
    """The model with its float weights stored as fp16 and cast back: what an fp16 export holds."""
    proto = onnx.load_from_string(model)
    graph = proto.graph
    for init in list(graph.initializer):
        if init.data_type == onnx.TensorProto.FLOAT:
            value = onnx.numpy_helper.to_array(init).astype(np.float16)
            graph.initializer.remove(init)
            graph.initializer.append(onnx.numpy_helper.from_array(value, init.name + "_h"))
            graph.node.insert(0, onnx.helper.make_node("Cast", [init.name + "_h"], [init.name],
                                                       to=onnx.TensorProto.FLOAT))
    return proto.SerializeToString()


@pytest.mark.parametrize("asked", ["fp16", "fp32"])
def test_the_precision_reported_is_the_one_built(trt_backend, tmp_path, asked):
    fp32_graph = dynamic_batch_model(batch=1)
    *_, from_fp32 = _load(trt_backend, fp32_graph, tmp_path / "a", trt_precision=asked)
    *_, from_fp16 = _load(trt_backend, _half_weights(fp32_graph), tmp_path / "b", trt_precision=asked)
    if trt_backend.MAJOR >= 11:  # strongly typed: the graph decides
        assert from_fp32.describe()["precision"] == "fp32"
    else:  # weakly typed: the builder flag decides
        assert from_fp32.describe()["precision"] == asked
    assert from_fp16.describe()["precision"] == "fp16"
    assert from_fp32.describe()["version"].startswith(f"{trt_backend.MAJOR}.")


def test_tensor_dtypes_come_from_the_engine(trt_backend, tmp_path):
    package, spec, backend = _load(trt_backend, dynamic_batch_model(batch=1), tmp_path)
    reference = OnnxRuntimeBackend.from_package(package.onnx_bytes, spec)
    batch = np.random.default_rng(1).random((1, 3, 64, 64))  # float64, as a careless caller sends
    got = backend.infer(batch)
    assert got[0].dtype == np.float32
    np.testing.assert_allclose(got[0], reference.infer(batch.astype(np.float32))[0], rtol=1e-6)


def test_parser_errors_reach_the_user(trt_backend, tmp_path):
    spec = {"input": {"name": "images", "batch": 1}, "output": {"outputs": ["output0"]}}
    with pytest.raises(ModelLoadError, match="TensorRT could not parse the ONNX model: In node"):
        trt_backend.TensorRTBackend.from_package(failing_model(), spec, settings=Settings(),
                                                 artifacts=ArtifactStore(tmp_path))


def test_builder_errors_reach_the_user_without_paths(trt_backend, tmp_path):
    proto = onnx.load_from_string(dynamic_batch_model(batch=1))
    proto.metadata_props.add(key=fakes.BUILD_ERROR_KEY,
                             value="Error Code 4: /opt/build/cache/x.plan: out of workspace")
    with pytest.raises(ModelLoadError) as caught:
        _load(trt_backend, proto.SerializeToString(), tmp_path)
    assert "could not build an engine for this model: Error Code 4: x.plan: out of workspace" in \
        caught.value.message
    assert "/opt" not in caught.value.message


def test_build_progress_rises_through_the_phases(trt_backend):
    engines = sys.modules["detserve_worker_gpu.engines"]
    seen: list[float] = []
    monitor = engines.BuildProgress(seen.append)
    fakes._report_phases(monitor)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(set(seen)) > 4


def test_dynamic_batch_profile_and_growing_buffers(trt_backend, tmp_path):
    package, spec, backend = _load(trt_backend, dynamic_batch_model(), tmp_path, trt_profile="1,4,16")
    assert backend.max_batch == 16
    ref = OnnxRuntimeBackend.from_package(package.onnx_bytes, spec)
    rng = np.random.default_rng(0)
    allocations = []
    for n in (1, 8, 4, 16):
        batch = rng.random((n, 3, 64, 64), dtype=np.float32)
        np.testing.assert_allclose(backend.infer(batch)[0], ref.infer(batch)[0], rtol=1e-6)
        with backend.pool.checkout() as slot:
            allocations.append(int(slot.buffers["images"][0]))
    assert allocations[0] != allocations[1]  # grew for 8
    assert allocations[1] == allocations[2]  # 4 fits in the buffer of 8
    with pytest.raises(ValueError, match="outside the profile"):
        backend.infer(np.zeros((17, 3, 64, 64), np.float32))
    assert fakecuda.Context.depth == 0


def test_closing_mid_request_frees_that_slot_when_it_ends(trt_backend, tmp_path):
    *_, backend = _load(trt_backend, dynamic_batch_model(batch=1), tmp_path, worker_concurrency=4)
    backend.infer(np.zeros((1, 3, 64, 64), np.float32))  # a slot with its buffers
    with backend.pool.checkout() as busy:  # a request still running when the model is unloaded
        addresses = [int(device) for device, _ in busy.buffers.values()]
        backend.close()
        assert all(a in fakecuda.MEMORY for a in addresses) and busy.context is not None
    assert not any(a in fakecuda.MEMORY for a in addresses) and busy.context is None
    assert fakecuda.Context.depth == 0
