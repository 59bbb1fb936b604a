"""The GPU worker's glue on real CUDA through real pycuda, where TensorRT itself is absent.

Everything is detserve's own code (TensorRTBackend, its pool of execution contexts, streams,
pinned and device buffers, Detector, Batcher) on a real GPU, except the engine: the fake of
tests/fakes.py, patched so that its execution reads its input from real device memory and writes
its outputs back there with real pycuda copies. So a machine with an NVIDIA GPU and no TensorRT
checks contexts, buffers, streams and concurrency. Marked `gpu`; each test skips, saying why,
where pycuda or a CUDA device is missing. Set DETSERVE_GPU_REPORT to a path for a JSON summary.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import fakes
from detserve.backends.onnxruntime import OnnxRuntimeBackend
from detserve.config import Settings
from detserve.inference.batching import Batcher
from detserve.inference.detector import Detector, Limits
from detserve.service.artifacts import ArtifactStore
from detserve.service.packages import read_package
from support import dynamic_batch_model, image_bytes

pytestmark = pytest.mark.gpu
REPORT: dict[str, Any] = {}
THREADS, ROUNDS = 16, 30  # 480 requests


@pytest.fixture(scope="module")
def cuda():
    """Real pycuda.driver on a real device, or a skip that says what is missing."""
    driver = pytest.importorskip(
        "pycuda.driver", reason="pycuda is not installed (pip install pycuda: it builds against "
                                "this machine's CUDA)")
    try:
        driver.init()
        count = driver.Device.count()
    except Exception as exc:  # pycuda raises its own error types for a missing driver
        pytest.skip(f"the CUDA driver is not usable here: {exc}")
    if count < 1:
        pytest.skip("no NVIDIA GPU is visible to this process")
    device = driver.Device(0)
    import pycuda

    REPORT.update(gpu=device.name(), compute_capability=".".join(map(str, device.compute_capability())),
                  cuda_driver_api=driver.get_driver_version(), pycuda=pycuda.VERSION_TEXT)
    yield driver
    if os.environ.get("DETSERVE_GPU_REPORT"):
        with open(os.environ["DETSERVE_GPU_REPORT"], "w") as fh:
            json.dump(REPORT, fh, indent=2)


@pytest.fixture(params=sorted(fakes.VERSIONS), ids=lambda m: f"tensorrt{m}-fake")
def gpu(cuda, request, monkeypatch):
    """detserve_worker_gpu on the fake TensorRT of one major and the real pycuda."""
    monkeypatch.setitem(sys.modules, "tensorrt", fakes.modules(fakes.VERSIONS[request.param])["tensorrt"])

    def read_device(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        cuda.Context.synchronize()  # the input's copy was queued on the caller's stream
        host = np.empty(shape, dtype)
        cuda.memcpy_dtoh(host, address)
        return host

    def write_device(address: int, value: np.ndarray) -> None:
        cuda.memcpy_htod(address, np.ascontiguousarray(value))

    monkeypatch.setattr(fakes, "read_device", read_device)
    monkeypatch.setattr(fakes, "write_device", write_device)
    for name in [n for n in sys.modules if n.startswith("detserve_worker_gpu.")]:
        monkeypatch.delitem(sys.modules, name)
    yield importlib.import_module("detserve_worker_gpu.tensorrt")
    assert cuda.Context.get_current() is None, "a CUDA context was left pushed on this thread"
    for name in [n for n in sys.modules if n.startswith("detserve_worker_gpu.")]:
        monkeypatch.delitem(sys.modules, name)


def _load(gpu, model: bytes, tmp_path, **settings: Any):
    package = read_package(model, None, max_bytes=1 << 30)
    spec = {"input": package.input, "output": package.output}
    backend = gpu.TensorRTBackend.from_package(package.onnx_bytes, spec, artifacts=ArtifactStore(tmp_path),
                                               settings=replace(Settings(), **settings))
    version = {"labels": package.labels, **spec}
    limits = Limits(1 << 30, 1 << 30)
    reference = Detector(OnnxRuntimeBackend.from_package(package.onnx_bytes, spec), version, limits)
    return Detector(backend, version, limits), reference


def _images() -> list[bytes]:
    rng = np.random.default_rng(11)
    return [image_bytes(64, 64, color=tuple(int(c) for c in rng.integers(0, 256, 3)))
            for _ in range(THREADS)]


def _hammer(cuda, call) -> int:
    """THREADS threads at once, ROUNDS calls each; the wrong answers, contexts checked balanced."""
    start = threading.Barrier(THREADS)

    def worker(index: int) -> int:
        start.wait()
        wrong = sum(call(index) for _ in range(ROUNDS))
        assert cuda.Context.get_current() is None, "a CUDA context was left pushed"
        return wrong

    with ThreadPoolExecutor(THREADS) as pool:
        return sum(pool.map(worker, range(THREADS)))


def test_round_trips_through_device_memory_are_exact(gpu, tmp_path, request):
    detector, reference = _load(gpu, dynamic_batch_model(), tmp_path, trt_profile="1,8,32")
    rng = np.random.default_rng(3)
    for n in (1, 3, 8, 32, 2):  # growing buffers, then a smaller batch in the large ones
        batch = rng.random((n, 3, 64, 64), dtype=np.float32)
        got, want = detector.backend.infer(batch)[0], reference.backend.infer(batch)[0]
        np.testing.assert_array_equal(got, want)
    REPORT[f"{request.node.callspec.id}: round trips"] = "byte-exact at batch 1, 3, 8, 32, 2"


def test_a_static_engine_serves_16_threads_each_its_own_answer(gpu, cuda, tmp_path, request):
    # given a static-batch engine (batch 1: no batcher) and 16 threads with different images
    detector, reference = _load(gpu, dynamic_batch_model(batch=1), tmp_path, worker_concurrency=THREADS)
    images = _images()
    want = [reference.infer(img) for img in images]
    # when each sends its image 30 times at once, then each gets its own answer every time
    wrong = _hammer(cuda, lambda i: detector.infer(images[i]) != want[i])
    pool = detector.backend.pool
    REPORT[f"{request.node.callspec.id}: static engine"] = {
        "requests": THREADS * ROUNDS, "wrong": wrong, "contexts": pool.created,
        "contexts_busy_at_once": pool.busy_peak}
    assert wrong == 0, f"{wrong} of {THREADS * ROUNDS} answers belonged to another image"
    assert pool.busy_peak > 1  # the requests overlapped on the GPU, each on its own context
    detector.backend.close()


def test_the_batcher_serves_16_threads_each_its_own_answer(gpu, cuda, tmp_path, request):
    # given a dynamic-batch engine behind the worker's Batcher, as ModelHost sets it up
    detector, reference = _load(gpu, dynamic_batch_model(), tmp_path, trt_profile="1,8,32")
    batcher = Batcher(detector.infer_batch, max_batch=32, window=0.005, name="gpu-test-batcher")
    images = _images()
    want = [reference.infer(img) for img in images]

    def call(i: int) -> bool:
        prepared = detector.prepare(images[i])  # in the caller's thread, as a worker task does
        return detector.finish(batcher(prepared, timeout=60), prepared) != want[i]

    try:
        wrong = _hammer(cuda, call)
    finally:
        batcher.close()
    sizes = batcher.batches
    REPORT[f"{request.node.callspec.id}: batcher"] = {
        "requests": THREADS * ROUNDS, "wrong": wrong, "batches": len(sizes),
        "mean_batch": round(sum(sizes) / len(sizes), 2), "max_batch": max(sizes)}
    assert wrong == 0, f"{wrong} of {THREADS * ROUNDS} answers belonged to another image"
    assert max(sizes) > 1  # batches formed


def test_pinned_copy_bandwidth(cuda):
    size = 256 << 20
    context = cuda.Device(0).retain_primary_context()
    context.push()
    try:
        host = cuda.pagelocked_empty(size, np.uint8)
        host[:] = np.arange(size, dtype=np.uint64).astype(np.uint8)
        device = cuda.mem_alloc(size)
        stream = cuda.Stream()
        rates = {}
        for name, copy in (("host_to_device", lambda: cuda.memcpy_htod_async(device, host, stream)),
                           ("device_to_host", lambda: cuda.memcpy_dtoh_async(host, device, stream))):
            copy()
            stream.synchronize()  # warm
            started = time.perf_counter()
            for _ in range(10):
                copy()
            stream.synchronize()
            rates[name] = round(10 * size / (time.perf_counter() - started) / 1e9, 1)
        back = np.empty_like(host)
        cuda.memcpy_dtoh(back, device)
        device.free()
    finally:
        context.pop()
    assert np.array_equal(back, host)
    REPORT["pinned copies GB/s (256 MiB x 10)"] = rates
    print(f"pinned copies: {rates}")
    assert min(rates.values()) > 1.0  # generous: PCIe gen3 x16 gives about 12
