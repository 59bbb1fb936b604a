"""TensorRTBackend: an engine built from the version's ONNX file (TensorRT 10 API), cached in the
artifact store, run by tensor name on a CUDA stream with pycuda device and pinned host buffers.

Only the GPU worker imports this module; the CPU image never does (see the guard below).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from detserve.errors import MissingDependencyError, ModelLoadError

try:
    import pycuda.driver as cuda
    import tensorrt as trt
except ImportError as exc:  # pragma: no cover - exercised where TensorRT is absent
    raise MissingDependencyError(
        "the GPU worker needs TensorRT 10 and pycuda: pip install 'detserve[gpu]' on a machine "
        f"with an NVIDIA GPU and CUDA ({exc})"
    ) from exc

log = logging.getLogger("detserve.inference.worker.gpu")
ENGINE_KIND = "engines"


@dataclass(frozen=True)
class Profile:
    min: int = 1
    opt: int = 8
    max: int = 32

    @classmethod
    def parse(cls, text: str) -> Profile:
        lo, opt, hi = (int(v) for v in text.split(","))
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"batch profile {text!r} must be min <= opt <= max, all >= 1")
        return cls(lo, opt, hi)


class _CudaContext:
    """One CUDA context per process, made on first use (so after any fork), pushed per call."""

    _lock = threading.Lock()
    _by_pid: dict[int, Any] = {}

    @classmethod
    def get(cls) -> Any:
        with cls._lock:
            pid = os.getpid()
            if pid not in cls._by_pid:
                cuda.init()
                cls._by_pid[pid] = cuda.Device(0).retain_primary_context()
            return cls._by_pid[pid]


@contextmanager
def current_context() -> Any:
    ctx = _CudaContext.get()
    ctx.push()
    try:
        yield ctx
    finally:
        ctx.pop()


def gpu_identity() -> tuple[str, str]:
    """The GPU's model name and compute capability, e.g. ("NVIDIA H100", "9.0")."""
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return device.name(), f"{major}.{minor}"


def engine_key(onnx_sha256: str, precision: str, profile: Profile | None) -> str:
    """Everything an engine depends on: a change to any of them builds a new one."""
    gpu, capability = gpu_identity()
    parts = {"onnx": onnx_sha256, "tensorrt": trt.__version__, "gpu": gpu,
             "compute_capability": capability, "precision": precision,
             "profile": [profile.min, profile.opt, profile.max] if profile else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def build_engine(onnx_bytes: bytes, precision: str, profile: Profile | None,
                 workspace_bytes: int) -> tuple[bytes, str]:
    """Parse the ONNX file and build a serialized engine; returns it and the precision used.

    Raises:
        ModelLoadError: with the parser's own messages when the model does not parse or build.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    used = "fp32"
    if precision == "fp16" and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        used = "fp16"
    tensor = network.get_input(0)
    if profile is not None:
        opt_profile = builder.create_optimization_profile()
        rest = tuple(tensor.shape)[1:]
        opt_profile.set_shape(tensor.name, (profile.min, *rest), (profile.opt, *rest),
                              (profile.max, *rest))
        config.add_optimization_profile(opt_profile)
    log.info("building a TensorRT engine (%s, batch profile %s); this can take minutes", used, profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadError("TensorRT could not build an engine for this model (see the worker log)")
    return bytes(serialized), used


class TensorRTBackend:
    """A deserialized engine, one execution context, a stream, and reusable buffers."""

    def __init__(self, engine: Any, input_name: str, outputs: list[str], max_batch: int) -> None:
        self.engine = engine
        self.input_name = input_name
        self.outputs = outputs
        self.max_batch = max_batch
        with current_context():
            self.context = engine.create_execution_context()
            self.stream = cuda.Stream()
        self._buffers: dict[str, tuple[Any, np.ndarray]] = {}  # name -> (device, pinned host)

    @classmethod
    def from_package(cls, onnx_bytes: bytes, spec: dict[str, Any], *, settings: Any = None,
                     artifacts: Any = None, sha256: str = "", **_: Any) -> TensorRTBackend:
        """Reuse the cached engine for this ONNX/TensorRT/GPU/precision/profile, or build it."""
        dynamic = spec["input"].get("batch") is None
        profile = Profile.parse(settings.trt_profile) if dynamic and settings else (
            Profile() if dynamic else None)
        precision = settings.trt_precision if settings else "fp16"
        with current_context():
            key = engine_key(sha256 or hashlib.sha256(onnx_bytes).hexdigest(), precision, profile)
            plan = artifacts.get_derived(ENGINE_KIND, key) if artifacts else None
            if plan is None:
                workspace = (settings.trt_workspace_mb if settings else 1024) * 1024 * 1024
                plan, used = build_engine(onnx_bytes, precision, profile, workspace)
                log.info("built a %s TensorRT engine (%d bytes), cached as %s", used, len(plan), key[:12])
                if artifacts:
                    artifacts.put_derived(ENGINE_KIND, key, plan)
            else:
                log.info("reusing cached TensorRT engine %s", key[:12])
            engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        if engine is None:
            raise ModelLoadError("TensorRT could not load the cached engine; delete it to rebuild")
        return cls(engine, spec["input"]["name"], list(spec["output"]["outputs"]),
                   profile.max if profile else 1)

    @property
    def device_memory_bytes(self) -> int:
        """The engine's device memory for activations (monitoring/usage.py reports it)."""
        return int(self.engine.device_memory_size)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Copy in, execute on the stream, copy out; buffers grow to the largest batch seen."""
        with current_context():
            self.context.set_input_shape(self.input_name, tuple(batch.shape))
            host_in = self._buffer(self.input_name, batch.shape, batch.dtype)
            np.copyto(host_in, batch)
            device_in, _ = self._buffers[self.input_name]
            cuda.memcpy_htod_async(device_in, host_in, self.stream)
            self.context.set_tensor_address(self.input_name, int(device_in))
            hosts = []
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
                host = self._buffer(name, shape, dtype)
                self.context.set_tensor_address(name, int(self._buffers[name][0]))
                hosts.append(host)
            if not self.context.execute_async_v3(self.stream.handle):
                raise RuntimeError("TensorRT execution failed")
            for name, host in zip(self.outputs, hosts, strict=True):
                cuda.memcpy_dtoh_async(host, self._buffers[name][0], self.stream)
            self.stream.synchronize()
            return [np.array(h, copy=True) for h in hosts]

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A pinned host view of `shape` over a buffer pair that is reused, grown when too small."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        current = self._buffers.get(name)
        if current is None or current[1].nbytes < nbytes:
            host = cuda.pagelocked_empty(int(np.prod(shape)), dtype)
            self._buffers[name] = (cuda.mem_alloc(max(nbytes, 1)), host)
        return self._buffers[name][1][: int(np.prod(shape))].reshape(shape)

    def close(self) -> None:
        with current_context():
            self._buffers.clear()
            self.context = None
            self.engine = None
