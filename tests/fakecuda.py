"""A fake of `pycuda.driver` with only the names TensorRTBackend uses: device memory is host memory
behind integer addresses. tests/fakes.py pairs it with the fake tensorrt; the names are checked
against pycuda's documentation in tests/unit/test_tensorrt_fake.py."""

from __future__ import annotations

import itertools
import threading
import types
from typing import Any

import numpy as np

MEMORY: dict[int, DeviceAllocation] = {}
_ADDRESSES = itertools.count(0x10000, 0x10000)
FREE_MEMORY = 80 << 30  # what mem_get_info reports free; tests shrink it


class DeviceAllocation:
    def __init__(self, size: int) -> None:
        self.address = next(_ADDRESSES)
        self.data = np.zeros(size, dtype=np.uint8)
        MEMORY[self.address] = self

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        MEMORY.pop(self.address, None)


def mem_alloc(bytes: int) -> DeviceAllocation:  # noqa: A002 - pycuda's own parameter name
    return DeviceAllocation(bytes)


def mem_get_info() -> tuple[int, int]:
    return FREE_MEMORY, 80 << 30


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


_DEPTH_LOCK = threading.Lock()


class Context:
    depth = 0  # pushes minus pops over all threads: the backend must leave it balanced

    def push(self) -> None:
        with _DEPTH_LOCK:
            Context.depth += 1

    def pop(self) -> None:
        with _DEPTH_LOCK:
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




def module() -> types.ModuleType:
    """The `pycuda.driver` module of this fake."""
    driver = types.ModuleType("pycuda.driver")
    for name in ("mem_alloc", "mem_get_info", "pagelocked_empty", "memcpy_htod_async",
                 "memcpy_dtoh_async", "Stream", "Device", "Context", "init"):
        setattr(driver, name, globals()[name])
    return driver
