"""TensorRTBackend against fakes of tensorrt/pycuda whose names are checked against the real API."""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import replace

import numpy as np
import pytest

import fakes
from detserve.backends.onnxruntime import OnnxRuntimeBackend
from detserve.config import Settings
from detserve.errors import ModelLoadError
from detserve.inference.detector import Detector, Limits
from detserve.service.artifacts import ArtifactStore
from detserve.service.demo import build_blob_detector
from detserve.service.packages import read_package
from support import blobs_image, dynamic_batch_model, failing_model

# Names of the TensorRT 10 Python API and of pycuda.driver, from their documentation
# (docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api: Core/Logger, Core/Builder,
# Core/BuilderConfig, Core/Engine, Core/ExecutionContext, Core/Runtime, Core/OptimizationProfile,
# Graph/Network, Parsers/Onnx/pyOnnx, FoundationalTypes/DataType; documen.tician.de/pycuda/driver).
REAL_API = {
    "tensorrt": {
        "__version__", "Logger", "Logger.WARNING", "Logger.INFO", "Logger.min_severity",
        "MemoryPoolType", "MemoryPoolType.WORKSPACE", "BuilderFlag", "BuilderFlag.FP16",
        "TensorIOMode", "TensorIOMode.INPUT", "TensorIOMode.OUTPUT", "DataType", "DataType.FLOAT",
        "DataType.HALF", "DataType.UINT8", "DataType.INT64", "nptype",
        "Builder", "Builder.create_network", "Builder.create_builder_config",
        "Builder.create_optimization_profile", "Builder.build_serialized_network",
        "Builder.platform_has_fast_fp16", "Builder.logger",
        "OnnxParser", "OnnxParser.parse", "OnnxParser.num_errors", "OnnxParser.get_error",
        "INetworkDefinition.get_input", "INetworkDefinition.num_inputs", "ITensor.name", "ITensor.shape",
        "IBuilderConfig.set_memory_pool_limit", "IBuilderConfig.set_flag",
        "IBuilderConfig.add_optimization_profile", "IOptimizationProfile.set_shape",
        "Runtime", "Runtime.deserialize_cuda_engine", "Runtime.logger",
        "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "ICudaEngine.get_tensor_mode",
        "ICudaEngine.get_tensor_dtype", "ICudaEngine.create_execution_context",
        "IExecutionContext.engine", "IExecutionContext.set_input_shape",
        "IExecutionContext.get_tensor_shape", "IExecutionContext.set_tensor_address",
        "IExecutionContext.execute_async_v3",
    },
    "pycuda.driver": {
        "init", "Device", "Device.count", "Device.name", "Device.compute_capability",
        "Device.retain_primary_context", "Context", "Context.push", "Context.pop",
        "mem_alloc", "DeviceAllocation.free", "pagelocked_empty", "memcpy_htod_async",
        "memcpy_dtoh_async", "Stream", "Stream.handle", "Stream.synchronize",
    },
}
# helpers of the fake itself, not imitations of real names
FAKE_ONLY = {"Builder.builds", "Context.depth", "ICudaEngine.profile", "ICudaEngine.header",
             "ICudaEngine.session", "ICudaEngine.modes", "ICudaEngine.dtypes", "ICudaEngine.names",
             "IExecutionContext.shapes", "IExecutionContext.addresses", "OnnxParser.network",
             "OnnxParser.errors", "DeviceAllocation.address", "DeviceAllocation.data",
             "Stream.synchronized", "Device.number", "INetworkDefinition.model",
             "INetworkDefinition.inputs", "IBuilderConfig.flags", "IBuilderConfig.pools",
             "IBuilderConfig.profiles", "IOptimizationProfile.shapes"}


def _public_names(module) -> set[str]:
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") and name != "__version__":
            continue
        names.add(name)
        if inspect.isclass(value):
            for attr in vars(value):
                if not attr.startswith("_"):
                    names.add(f"{name}.{attr}")
    return names


def test_fake_names_exist_in_the_real_api():
    mods = fakes.modules()
    for module_name, real in REAL_API.items():
        invented = _public_names(mods[module_name]) - real - FAKE_ONLY
        assert not invented, f"{module_name} fake defines names the real API lacks: {invented}"
    # and the classes the backend reaches through returned objects are real ones too
    for cls in (fakes.INetworkDefinition, fakes.ITensor, fakes.IBuilderConfig, fakes.IOptimizationProfile,
                fakes.ICudaEngine, fakes.IExecutionContext, fakes.DeviceAllocation):
        for attr in vars(cls):
            if not attr.startswith("_"):
                name = f"{cls.__name__}.{attr}"
                assert name in REAL_API["tensorrt"] | REAL_API["pycuda.driver"] | FAKE_ONLY, name


@pytest.fixture()
def trt_backend(monkeypatch):
    for name, module in fakes.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "detserve_worker_gpu.tensorrt", raising=False)
    module = importlib.import_module("detserve_worker_gpu.tensorrt")
    module._CudaContext._by_pid.clear()
    yield module
    monkeypatch.delitem(sys.modules, "detserve_worker_gpu.tensorrt", raising=False)


def _spec(model: bytes):
    package = read_package(model, None, max_bytes=1 << 30)
    return package, {"input": package.input, "output": package.output}


def test_outputs_match_onnx_runtime(trt_backend, tmp_path):
    package, spec = _spec(build_blob_detector().SerializeToString())
    store = ArtifactStore(tmp_path)
    backend = trt_backend.TensorRTBackend.from_package(package.onnx_bytes, spec, settings=Settings(),
                                                       artifacts=store, sha256="a" * 64)
    assert backend.max_batch == 1  # the demo's batch is fixed at 1: no profile, no batching
    reference = OnnxRuntimeBackend.from_package(package.onnx_bytes, spec)
    limits = Limits(1 << 30, 1 << 30)
    image = blobs_image([("red", 20, 20, 80, 80)])
    got = Detector(backend, {"labels": package.labels, **spec}, limits).infer(image)
    want = Detector(reference, {"labels": package.labels, **spec}, limits).infer(image)
    assert got == want and got.classes
    assert fakes.Context.depth == 0


def test_engine_cache_reuse_and_invalidation(trt_backend, tmp_path):
    package, spec = _spec(build_blob_detector().SerializeToString())
    store = ArtifactStore(tmp_path)
    settings = Settings()
    build = lambda s=settings, sha="b" * 64: trt_backend.TensorRTBackend.from_package(  # noqa: E731
        package.onnx_bytes, spec, settings=s, artifacts=store, sha256=sha)
    before = fakes.Builder.builds
    build()
    build()  # a redeploy, a restart or a second worker of the same GPU: reused
    assert fakes.Builder.builds == before + 1
    build(replace(settings, trt_precision="fp32"))
    build(sha="c" * 64)
    assert fakes.Builder.builds == before + 3
    assert len(list((tmp_path / "engines").iterdir())) == 3


def test_cache_key_covers_every_input(trt_backend, monkeypatch):
    key = trt_backend.engine_key
    profile = trt_backend.Profile()
    base = key("d" * 64, "fp16", profile)
    assert base == key("d" * 64, "fp16", profile)
    assert base != key("e" * 64, "fp16", profile)
    assert base != key("d" * 64, "fp32", profile)
    assert base != key("d" * 64, "fp16", trt_backend.Profile(1, 4, 16))
    assert base != key("d" * 64, "fp16", None)
    monkeypatch.setattr(trt_backend.trt, "__version__", "10.9.0")
    assert base != key("d" * 64, "fp16", profile)
    monkeypatch.setattr(fakes.Device, "compute_capability", lambda self: (8, 9))
    monkeypatch.setattr(trt_backend.trt, "__version__", "10.3.0")
    assert base != key("d" * 64, "fp16", profile)


def test_parser_errors_reach_the_user(trt_backend, tmp_path):
    spec = {"input": {"name": "images", "batch": 1}, "output": {"outputs": ["output0"]}}
    with pytest.raises(ModelLoadError, match="TensorRT could not parse the ONNX model: In node"):
        trt_backend.TensorRTBackend.from_package(failing_model(), spec, settings=Settings(),
                                                 artifacts=ArtifactStore(tmp_path))


def test_dynamic_batch_profile_and_growing_buffers(trt_backend, tmp_path):
    package, spec = _spec(dynamic_batch_model())
    backend = trt_backend.TensorRTBackend.from_package(
        package.onnx_bytes, spec, settings=replace(Settings(), trt_profile="1,4,16"),
        artifacts=ArtifactStore(tmp_path), sha256="f" * 64)
    assert backend.max_batch == 16
    ref = OnnxRuntimeBackend.from_package(package.onnx_bytes, spec)
    rng = np.random.default_rng(0)
    allocations = []
    for n in (1, 8, 4, 16):
        batch = rng.random((n, 3, 64, 64), dtype=np.float32)
        np.testing.assert_allclose(backend.infer(batch)[0], ref.infer(batch)[0], rtol=1e-6)
        allocations.append(int(backend._buffers["images"][0]))
    assert allocations[0] != allocations[1]  # grew for 8
    assert allocations[1] == allocations[2]  # 4 fits in the buffer of 8
    with pytest.raises(ValueError, match="outside the profile"):
        backend.infer(np.zeros((17, 3, 64, 64), np.float32))
    assert fakes.Context.depth == 0
