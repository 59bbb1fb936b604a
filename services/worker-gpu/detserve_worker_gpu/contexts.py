"""CUDA contexts per process and a pool of TensorRT execution contexts per engine.

An IExecutionContext is not thread-safe, and neither are a stream or a buffer set shared by two
requests: each caller checks out a whole slot (execution context, stream, pinned and device
buffers) and gives it back, so concurrent requests on one engine overlap on the GPU, each on its
own stream, and never write into each other's buffers. Imported only by
detserve_worker_gpu.tensorrt, after its guard.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pycuda.driver as cuda

log = logging.getLogger("detserve.inference.worker.gpu")


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
def current_context() -> Iterator[Any]:
    ctx = _CudaContext.get()
    ctx.push()
    try:
        yield ctx
    finally:
        ctx.pop()


@dataclass
class Slot:
    """One execution context with its own stream and buffers, used by one request at a time."""

    context: Any
    stream: Any
    buffers: dict[str, tuple[Any, np.ndarray]] = field(default_factory=dict)  # device, pinned

    def buffer(self, name: str, shape: tuple[int, ...], dtype: Any) -> tuple[Any, np.ndarray]:
        """The device buffer and a pinned host view of `shape`; reused, grown when too small."""
        count = int(np.prod(shape))
        nbytes = count * np.dtype(dtype).itemsize
        current = self.buffers.get(name)
        if current is None or current[1].nbytes < nbytes or current[1].dtype != np.dtype(dtype):
            self.buffers[name] = (cuda.mem_alloc(max(nbytes, 1)), cuda.pagelocked_empty(count, dtype))
        device, host = self.buffers[name]
        return device, host[:count].reshape(shape)


def pool_size(concurrency: int, per_context_bytes: int, free_bytes: int) -> int:
    """As many contexts as requests can run at once, within half the device memory free now."""
    budget = free_bytes // 2
    return max(1, min(concurrency, budget // max(1, per_context_bytes)))


class ContextPool:
    """Up to `size` slots of one engine, made on demand; a caller waits when all are busy.

    Call inside current_context(): slots are made (and used) in the process's CUDA context.
    """

    def __init__(self, engine: Any, size: int) -> None:
        self.engine, self.size = engine, size
        self._idle: queue.LifoQueue[Slot] = queue.LifoQueue()
        self._lock = threading.Lock()
        self.created = 0
        self.busy_peak = 0
        self._busy = 0
        self._closed = False

    @contextmanager
    def checkout(self) -> Iterator[Slot]:
        slot = self._take()
        try:
            yield slot
        finally:
            with self._lock:
                self._busy -= 1
                closed = self._closed
            if closed:  # unloaded while this request ran: free it here, in the CUDA context
                _free(slot)
            else:
                self._idle.put(slot)

    def _take(self) -> Slot:
        try:
            slot = self._idle.get_nowait()
        except queue.Empty:
            slot = self._make() or self._idle.get()
        with self._lock:
            self._busy += 1
            self.busy_peak = max(self.busy_peak, self._busy)
        return slot

    def _make(self) -> Slot | None:
        with self._lock:
            if self.created >= self.size:
                return None
            self.created += 1
        context = self.engine.create_execution_context()
        if context is None:  # out of device memory: wait for a slot that exists instead
            with self._lock:
                self.created -= 1
                if self.created == 0:
                    raise RuntimeError("TensorRT could not make an execution context "
                                       "(is the GPU's memory full?)")
                self.size = self.created
            log.warning("TensorRT could not make another execution context; using %d", self.size)
            return None
        return Slot(context, cuda.Stream())

    def close(self) -> None:
        """Free the idle slots now and any busy one when its request ends."""
        with self._lock:
            self._closed = True
        while True:
            try:
                _free(self._idle.get_nowait())
            except queue.Empty:
                return


def _free(slot: Slot) -> None:
    for device, _ in slot.buffers.values():
        device.free()
    slot.buffers.clear()
    slot.context = None  # the execution context goes now, while the CUDA context is current
