"""Fakes of the `tensorrt` and `pycuda.driver` modules, with only the names TensorRTBackend uses.

The engine is the ONNX model run by ONNX Runtime; device memory is host memory behind integer
addresses; so the backend's real logic (I/O by tensor name, shapes, buffers, copies, streams,
the engine cache) runs here unchanged. tests/unit/test_tensorrt_fake.py checks every name defined
here against the real TensorRT 10 / pycuda API, so the fake cannot drift into invented names.
"""

from __future__ import annotations

import itertools
import json
import types
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

# ---- tensorrt -------------------------------------------------------------------------------


class Logger:
    WARNING = 2
    INFO = 3

    def __init__(self, min_severity: int = WARNING) -> None:
        self.min_severity = min_severity


class MemoryPoolType:
    WORKSPACE = "WORKSPACE"


class BuilderFlag:
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
_ONNX_TO_TRT = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.UINT8: DataType.UINT8,
                onnx.TensorProto.INT64: DataType.INT64}


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


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
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
        for value in proto.graph.input:
            if value.name in init:
                continue
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                         for d in value.type.tensor_type.shape.dim)
            self.network.inputs.append(ITensor(value.name, dims))
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

    def set_memory_pool_limit(self, pool: str, pool_size: int) -> None:
        self.pools[pool] = pool_size

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    builds = 0  # how many engines were built in this process (the cache test counts them)
    platform_has_fast_fp16 = True

    def __init__(self, logger: Logger) -> None:
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
        Builder.builds += 1
        header = {"fp16": "FP16" in config.flags,
                  "profiles": [{k: v for k, v in p.shapes.items()} for p in config.profiles]}
        return json.dumps(header).encode() + b"\n" + network.model.SerializeToString()


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
        feeds = {}
        for name, shape in self.shapes.items():
            dtype = np.dtype(_NP[self.engine.get_tensor_dtype(name)])
            raw = _MEMORY[self.addresses[name]].data[: int(np.prod(shape)) * dtype.itemsize]
            feeds[name] = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape)
        names = [n for n in self.engine.names if self.engine.get_tensor_mode(n) == TensorIOMode.OUTPUT]
        for name, value in zip(names, self.engine.session.run(names, feeds), strict=True):
            value = np.ascontiguousarray(value.astype(_NP[self.engine.get_tensor_dtype(name)]))
            _MEMORY[self.addresses[name]].data[: value.nbytes] = np.frombuffer(value.tobytes(), np.uint8)
        return True


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
        self.names = list(self.modes)

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return self.modes[name]

    def get_tensor_dtype(self, name: str) -> str:
        return self.dtypes[name]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)

    def profile(self, name: str) -> tuple[tuple[int, ...], ...]:
        for p in self.header["profiles"]:
            if name in p:
                return tuple(tuple(s) for s in p[name])
        static = tuple(self.session.get_inputs()[0].shape)
        return static, static, static


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine:
        return ICudaEngine(serialized_engine)


# ---- pycuda.driver --------------------------------------------------------------------------

_MEMORY: dict[int, DeviceAllocation] = {}
_ADDRESSES = itertools.count(0x10000, 0x10000)


class DeviceAllocation:
    def __init__(self, size: int) -> None:
        self.address = next(_ADDRESSES)
        self.data = np.zeros(size, dtype=np.uint8)
        _MEMORY[self.address] = self

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        _MEMORY.pop(self.address, None)


def mem_alloc(bytes: int) -> DeviceAllocation:  # noqa: A002 - pycuda's own parameter name
    return DeviceAllocation(bytes)


def pagelocked_empty(shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


def memcpy_htod_async(dest: DeviceAllocation, src: np.ndarray, stream: Stream | None = None) -> None:
    raw = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
    dest.data[: raw.size] = raw


def memcpy_dtoh_async(dest: np.ndarray, src: DeviceAllocation, stream: Stream | None = None) -> None:
    view = dest.reshape(-1).view(np.uint8)
    view[:] = src.data[: view.size]


class Stream:
    _handles = itertools.count(1)

    def __init__(self, flags: int = 0) -> None:
        self.handle = next(Stream._handles)
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1


class Context:
    depth = 0  # pushes minus pops: the backend must leave it balanced

    def push(self) -> None:
        Context.depth += 1

    def pop(self) -> None:
        Context.depth -= 1


class Device:
    def __init__(self, number: int) -> None:
        self.number = number

    @staticmethod
    def count() -> int:
        return 1

    def name(self) -> str:
        return "Fake GPU H100"

    def compute_capability(self) -> tuple[int, int]:
        return (9, 0)

    def retain_primary_context(self) -> Context:
        return Context()


def init(flags: int = 0) -> None:
    return None


def modules(version: str = "10.3.0") -> dict[str, types.ModuleType]:
    """sys.modules entries for `tensorrt`, `pycuda` and `pycuda.driver`."""
    trt = types.ModuleType("tensorrt")
    for name in ("Logger", "MemoryPoolType", "BuilderFlag", "TensorIOMode", "DataType", "nptype",
                 "OnnxParser", "Builder", "Runtime"):
        setattr(trt, name, globals()[name])
    trt.__version__ = version
    driver = types.ModuleType("pycuda.driver")
    for name in ("mem_alloc", "pagelocked_empty", "memcpy_htod_async", "memcpy_dtoh_async",
                 "Stream", "Device", "Context", "init"):
        setattr(driver, name, globals()[name])
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver  # type: ignore[attr-defined]
    return {"tensorrt": trt, "pycuda": pycuda, "pycuda.driver": driver}
