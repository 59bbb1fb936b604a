"""TensorRTBackend: an engine built from the version's ONNX file (TensorRT 10 or 11), cached in the
artifact store, run by tensor name through a pool of execution contexts, each with its own CUDA
stream and pycuda pinned and device buffers.

Only the GPU worker imports this module; the CPU image never does (see the guard below).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from detserve.errors import MissingDependencyError, ModelLoadError
from detserve.service import progress

try:
    import pycuda.driver as cuda
    import tensorrt as trt
except ImportError as exc:  # pragma: no cover - exercised where TensorRT is absent
    raise MissingDependencyError(
        "the GPU worker needs TensorRT 10 or 11 and pycuda: pip install 'detserve[gpu]' on a "
        f"machine with an NVIDIA GPU and CUDA ({exc})"
    ) from exc

from detserve_worker_gpu.contexts import ContextPool, current_context, pool_size
from detserve_worker_gpu.engines import (
    MAJOR,
    Profile,
    build_engine,
    device_memory_bytes,
    engine_key,
    graph_precision,
)

log = logging.getLogger("detserve.inference.worker.gpu")
ENGINE_KIND = "engines"
PRECISION_KIND = "engineprecision"  # beside each cached engine: the precision it was built with
__all__ = ["ENGINE_KIND", "MAJOR", "Profile", "TensorRTBackend", "engine_key"]


class TensorRTBackend:
    """A deserialized engine and its pool of execution contexts; safe to call from many threads."""

    def __init__(self, engine: Any, input_name: str, outputs: list[str], max_batch: int, *,
                 concurrency: int = 1, precision: str = "fp32") -> None:
        self.engine = engine
        self.input_name = input_name
        self.outputs = outputs
        self.max_batch = max_batch
        self.precision = precision
        with current_context():
            free, _ = cuda.mem_get_info()
        # A dynamic engine has one optimization profile, which serves one context at a time; its
        # one caller is the batcher. A static engine serves each worker thread from its own slot.
        wanted = 1 if max_batch > 1 else concurrency
        self.pool = ContextPool(engine, pool_size(wanted, self._context_bytes(), free))

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
                plan, used = _build(onnx_bytes, precision, profile, settings)
                if artifacts:
                    artifacts.put_derived(PRECISION_KIND, key, used.encode())
                    artifacts.put_derived(ENGINE_KIND, key, plan)
                log.info("built a %s TensorRT engine (%d bytes), cached as %s", used, len(plan), key[:12])
            else:
                used = _cached_precision(artifacts, key, onnx_bytes)
                log.info("reusing cached TensorRT engine %s (%s)", key[:12], used)
            engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        if engine is None:
            raise ModelLoadError("TensorRT could not load the cached engine; delete it to rebuild")
        return cls(engine, spec["input"]["name"], list(spec["output"]["outputs"]),
                   profile.max if profile else 1,
                   concurrency=settings.worker_concurrency if settings else 1, precision=used)

    def describe(self) -> dict[str, Any]:
        """What was built, as the service shows it: the precision is the engine's, not the ask."""
        return {"backend": "tensorrt", "version": trt.__version__, "precision": self.precision,
                "max_batch": self.max_batch, "contexts": self.pool.size}

    @property
    def device_memory_bytes(self) -> int:
        """The engine's device memory for activations (monitoring/usage.py reports it)."""
        return int(self.engine.device_memory_size)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Copy in, execute, copy out on a slot of this caller's own; each tensor's dtype is the
        engine's."""
        with current_context(), self.pool.checkout() as slot:
            ctx, stream = slot.context, slot.stream
            ctx.set_input_shape(self.input_name, tuple(batch.shape))
            device_in, host_in = slot.buffer(self.input_name, tuple(batch.shape),
                                             self._dtype(self.input_name))
            np.copyto(host_in, batch, casting="same_kind")
            cuda.memcpy_htod_async(device_in, host_in, stream)
            ctx.set_tensor_address(self.input_name, int(device_in))
            outs = []
            for name in self.outputs:
                device, host = slot.buffer(name, tuple(ctx.get_tensor_shape(name)), self._dtype(name))
                ctx.set_tensor_address(name, int(device))
                outs.append((device, host))
            if not ctx.execute_async_v3(stream.handle):
                raise RuntimeError("TensorRT execution failed")
            for device, host in outs:
                cuda.memcpy_dtoh_async(host, device, stream)
            stream.synchronize()
            return [np.array(host, copy=True) for _, host in outs]

    def close(self) -> None:
        with current_context():
            self.pool.close()

    def _dtype(self, name: str) -> np.dtype[Any]:
        return np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))

    def _context_bytes(self) -> int:
        """Device memory one slot takes at the largest batch: activations plus I/O buffers."""
        total = device_memory_bytes(self.engine)
        for name in (self.input_name, *self.outputs):
            dims = [self.max_batch if d < 0 else d for d in self.engine.get_tensor_shape(name)]
            total += int(np.prod(dims)) * self._dtype(name).itemsize
        return total


def _build(onnx_bytes: bytes, precision: str, profile: Profile | None, settings: Any) -> tuple[bytes, str]:
    """build_engine, its label and progress reported as the deploy's "building TensorRT engine"."""
    reporter = progress.current()

    def report(label: str, fraction: float) -> None:
        if fraction == 0.0:
            reporter.enter("building_engine", detail=label)
        else:
            reporter.advance(fraction)

    workspace = (settings.trt_workspace_mb if settings else 1024) * 1024 * 1024
    return build_engine(onnx_bytes, precision, profile, workspace, report)


def _cached_precision(artifacts: Any, key: str, onnx_bytes: bytes) -> str:
    """The precision a cached engine was built with, kept beside it (or the graph's, if absent)."""
    note = artifacts.get_derived(PRECISION_KIND, key) if artifacts else None
    return note.decode() if note else graph_precision(onnx_bytes)
