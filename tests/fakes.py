"""Fakes of the `tensorrt` and `pycuda.driver` (tests/fakecuda.py) modules, with only the names
TensorRTBackend uses.

The engine is the ONNX model run by ONNX Runtime; device memory is host memory behind integer
addresses; so the backend's real logic (I/O by tensor name, shapes, buffers, copies, streams,
execution contexts, the engine cache, build progress) runs here unchanged. `modules(version)` gives
TensorRT 10 or 11: each major's fake holds only names its own documentation lists, and
tests/unit/test_tensorrt_fake.py checks them against one list of real names per major.
"""

from __future__ import annotations

import json
import os
import time
import types
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

import fakecuda

# ---- tensorrt -------------------------------------------------------------------------------


class ILogger:
    class Severity:
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        pass

    def log(self, severity: int, msg: str) -> None:
        pass


class Logger(ILogger):
    ERROR = 1
    WARNING = 2
    INFO = 3

    def __init__(self, min_severity: int = WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity


class IProgressMonitor:
    """TensorRT calls phase_start / step_complete / phase_finish on the application's subclass."""

    def __init__(self) -> None:
        pass


class MemoryPoolType:
    WORKSPACE = "WORKSPACE"


class BuilderFlag:  # TensorRT 10 only: 11 removed the weak-typing flags, FP16 among them
    FP16 = "FP16"


class TensorIOMode:
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"


class DataType:
    FLOAT = "FLOAT"
    HALF = "HALF"
    UINT8 = "UINT8"
    INT64 = "INT64"


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.UINT8: np.uint8,
       DataType.INT64: np.int64}
_ONNX_TO_TRT = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF,
                onnx.TensorProto.UINT8: DataType.UINT8, onnx.TensorProto.INT64: DataType.INT64}


def nptype(dtype: str) -> type:
    return _NP[dtype]


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape


class INetworkDefinition:
    def __init__(self) -> None:
        self.model: onnx.ModelProto | None = None
        self.inputs: list[ITensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]


def _dims(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1
                 for d in value.type.tensor_type.shape.dim)


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self.network, self.errors = network, []

    def parse(self, model: bytes) -> bool:
        try:
            proto = onnx.load_from_string(model)
            onnx.checker.check_model(proto)
            ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        except Exception as exc:  # the real parser reports its errors the same way
            self.errors = [f"In node 0 (parseGraph): INVALID_NODE: {exc}"]
            return False
        self.network.model = proto
        init = {i.name for i in proto.graph.initializer}
        self.network.inputs = [ITensor(v.name, _dims(v)) for v in proto.graph.input if v.name not in init]
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: tuple[int, ...], opt: tuple[int, ...], max: tuple[int, ...]) -> None:  # noqa: A002
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))


class IBuilderConfig:
    def __init__(self) -> None:
        self.flags: set[str] = set()
        self.pools: dict[str, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.progress_monitor: IProgressMonitor | None = None

    def set_memory_pool_limit(self, pool: str, pool_size: int) -> None:
        self.pools[pool] = pool_size

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


BUILD_ERROR_KEY = "fake_tensorrt_build_error"  # metadata that makes the fake builder fail


class Builder:
    builds = 0  # how many engines were built in this process (the cache test counts them)

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition()

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        if network.model is None:
            return None
        if not _report_phases(config.progress_monitor):
            return None  # the monitor asked to cancel
        failure = {p.key: p.value for p in network.model.metadata_props}.get(BUILD_ERROR_KEY)
        if failure:
            self.logger.log(ILogger.Severity.ERROR, failure)
            return None
        Builder.builds += 1
        header = {"fp16": "FP16" in config.flags,
                  "profiles": [{k: v for k, v in p.shapes.items()} for p in config.profiles]}
        return json.dumps(header).encode() + b"\n" + network.model.SerializeToString()


class Builder10(Builder):
    platform_has_fast_fp16 = True


def _report_phases(monitor: Any) -> bool:
    """The phases a real build reports: a top phase whose steps hold nested ones."""
    if monitor is None:
        return True
    monitor.phase_start("Building engine", None, 2)
    for step, child in enumerate(("Graph optimization", "Tactic selection")):
        monitor.phase_start(child, "Building engine", 4)
        for inner in range(4):
            if not monitor.step_complete(child, inner):
                monitor.phase_finish(child)
                monitor.phase_finish("Building engine")
                return False
        monitor.phase_finish(child)
        monitor.step_complete("Building engine", step)
    monitor.phase_finish("Building engine")
    return True


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, _, hi = self.engine.profile(name)
        if any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=True)):
            raise ValueError(f"shape {shape} outside the profile {lo}..{hi}")
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.shapes:
            return self.shapes[name]
        feeds = {n: np.zeros(s, dtype=_NP[self.engine.get_tensor_dtype(n)]) for n, s in self.shapes.items()}
        outputs = self.engine.session.run([name], feeds)
        return tuple(outputs[0].shape)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        feeds = {name: read_device(self.addresses[name], shape,
                                   _NP[self.engine.get_tensor_dtype(name)])
                 for name, shape in self.shapes.items()}
        _record_batch(next(iter(self.shapes.values()))[0])
        names = [n for n in self.engine.names if self.engine.get_tensor_mode(n) == TensorIOMode.OUTPUT]
        for name, value in zip(names, self.engine.session.run(names, feeds), strict=True):
            write_device(self.addresses[name], value.astype(_NP[self.engine.get_tensor_dtype(name)]))
        return True


def _record_batch(batch: int) -> None:
    """Where a test asks (DETSERVE_FAKE_TRT_BATCH_LOG), each run's batch size goes to a file, and a
    run takes DETSERVE_FAKE_TRT_RUN_MS as a GPU would, so that requests queue into batches."""
    if os.environ.get("DETSERVE_FAKE_TRT_RUN_MS"):
        time.sleep(float(os.environ["DETSERVE_FAKE_TRT_RUN_MS"]) / 1000)
    if os.environ.get("DETSERVE_FAKE_TRT_BATCH_LOG"):
        with open(os.environ["DETSERVE_FAKE_TRT_BATCH_LOG"], "a") as log:
            log.write(f"{batch}\n")


# How the engine's execution reaches device memory; tests/gpu swaps these for real CUDA copies.
def read_device(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    dtype = np.dtype(dtype)
    raw = fakecuda.MEMORY[address].data[: int(np.prod(shape)) * dtype.itemsize]
    return np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape)


def write_device(address: int, value: np.ndarray) -> None:
    raw = np.frombuffer(np.ascontiguousarray(value).tobytes(), np.uint8)
    fakecuda.MEMORY[address].data[: raw.size] = raw


class ICudaEngine:
    def __init__(self, plan: bytes) -> None:
        header, model = plan.split(b"\n", 1)
        self.header = json.loads(header)
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        proto = onnx.load_from_string(model)
        init = {i.name for i in proto.graph.initializer}
        self.modes = {v.name: TensorIOMode.INPUT for v in proto.graph.input if v.name not in init}
        self.modes.update({v.name: TensorIOMode.OUTPUT for v in proto.graph.output})
        values = [v for v in list(proto.graph.input) + list(proto.graph.output) if v.name in self.modes]
        self.dtypes = {v.name: _ONNX_TO_TRT[v.type.tensor_type.elem_type] for v in values}
        self.dims = {v.name: _dims(v) for v in values}
        self.names = list(self.modes)

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    @property
    def device_memory_size_v2(self) -> int:
        return 8 << 20  # what a small detector's activations take

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return self.modes[name]

    def get_tensor_dtype(self, name: str) -> str:
        return self.dtypes[name]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.dims[name]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)

    def profile(self, name: str) -> tuple[tuple[int, ...], ...]:
        for p in self.header["profiles"]:
            if name in p:
                return tuple(tuple(s) for s in p[name])
        static = tuple(self.session.get_inputs()[0].shape)
        return static, static, static


class ICudaEngine10(ICudaEngine):
    @property
    def device_memory_size(self) -> int:  # 11 keeps only the _v2 name
        return self.device_memory_size_v2


class Runtime:
    engine_class: type[ICudaEngine] = ICudaEngine

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine:
        return self.engine_class(serialized_engine)


class Runtime10(Runtime):
    engine_class = ICudaEngine10


TENSORRT_NAMES = {
    10: {"ILogger": ILogger, "Logger": Logger, "IProgressMonitor": IProgressMonitor,
         "MemoryPoolType": MemoryPoolType, "BuilderFlag": BuilderFlag, "TensorIOMode": TensorIOMode,
         "DataType": DataType, "nptype": nptype, "OnnxParser": OnnxParser, "Builder": Builder10,
         "Runtime": Runtime10},
    11: {"ILogger": ILogger, "Logger": Logger, "IProgressMonitor": IProgressMonitor,
         "MemoryPoolType": MemoryPoolType, "TensorIOMode": TensorIOMode, "DataType": DataType,
         "nptype": nptype, "OnnxParser": OnnxParser, "Builder": Builder, "Runtime": Runtime},
}
VERSIONS = {10: "10.3.0", 11: "11.4.0"}


def modules(version: str = VERSIONS[10]) -> dict[str, types.ModuleType]:
    """sys.modules entries for `tensorrt` (the given version's names), `pycuda`, `pycuda.driver`."""
    trt = types.ModuleType("tensorrt")
    for name, value in TENSORRT_NAMES[int(version.split(".")[0])].items():
        setattr(trt, name, value)
    trt.__version__ = version
    driver = fakecuda.module()
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver  # type: ignore[attr-defined]
    return {"tensorrt": trt, "pycuda": pycuda, "pycuda.driver": driver}
