"""TensorRT for real: marked `gpu`, deselected by default (`pytest -m gpu` runs them), and each
skips, saying why, where there is no NVIDIA GPU or no TensorRT."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from detserve.backends.onnxruntime import OnnxRuntimeBackend
from detserve.config import Settings
from detserve.inference.detector import Detector, Limits
from detserve.inference.synthetic import iou, scene
from detserve.service.demo import demo_model_bytes
from detserve.service.packages import read_package

pytestmark = pytest.mark.gpu


def _gpu_backend():
    """Imports inside the test, as the GPU worker does."""
    from detserve_worker_gpu import gpu_problem

    problem = gpu_problem()
    if problem:
        pytest.skip(f"no usable GPU here: {problem}")
    from detserve_worker_gpu.tensorrt import TensorRTBackend

    return TensorRTBackend


def _detectors(precision: str, tmp_path):
    from detserve.service.artifacts import ArtifactStore

    backend_cls = _gpu_backend()
    package = read_package(demo_model_bytes(), None, max_bytes=1 << 30)
    spec = {"input": package.input, "output": package.output}
    version = {"labels": package.labels, **spec}
    limits = Limits(1 << 30, 1 << 30)
    settings = replace(Settings(), trt_precision=precision)
    trt = backend_cls.from_package(package.onnx_bytes, spec, settings=settings,
                                   artifacts=ArtifactStore(tmp_path))
    ort = OnnxRuntimeBackend.from_package(package.onnx_bytes, spec)
    return Detector(trt, version, limits), Detector(ort, version, limits)


def test_fp32_outputs_match_onnx_runtime(tmp_path):
    trt, ort = _detectors("fp32", tmp_path)
    for seed in range(10):
        prepared = ort.prepare(scene(seed).encode())
        np.testing.assert_allclose(trt.backend.infer(prepared.tensor)[0],
                                   ort.backend.infer(prepared.tensor)[0], atol=1e-3, rtol=1e-3)


def test_fp16_finds_the_same_objects(tmp_path):
    trt, ort = _detectors("fp16", tmp_path)
    for seed in range(10):
        image = scene(seed).encode()
        a, b = trt.infer(image), ort.infer(image)
        assert a.classes == b.classes
        if a.boxes:
            overlaps = iou(np.asarray(a.boxes), np.asarray(b.boxes)).diagonal()
            assert (overlaps >= 0.9).all()


def test_throughput_by_batch(tmp_path):
    """A dynamic-batch engine: a batch of 8 gives each image its own row of a single run's output,
    exactly as 8 runs of one would, and runs more images per second than batch 1."""
    from detserve.service.artifacts import ArtifactStore
    from support import dynamic_batch_model, image_bytes

    backend_cls = _gpu_backend()
    package = read_package(dynamic_batch_model(), None, max_bytes=1 << 30)
    spec = {"input": package.input, "output": package.output}
    settings = replace(Settings(), trt_precision="fp32", trt_profile="1,8,32")
    trt = Detector(backend_cls.from_package(package.onnx_bytes, spec, settings=settings,
                                            artifacts=ArtifactStore(tmp_path)),
                   {"labels": package.labels, **spec}, Limits(1 << 30, 1 << 30))
    assert trt.backend.max_batch >= 8
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 0)] * 2
    tensors = [trt.prepare(image_bytes(64, 64, color=c)).tensor for c in colours]
    batched = trt.backend.infer(np.concatenate(tensors))[0]
    singles = np.concatenate([trt.backend.infer(t)[0] for t in tensors])
    np.testing.assert_allclose(batched, singles, atol=1e-3, rtol=1e-3)
    rates = {}
    for batch in (1, 8):
        x = np.concatenate(tensors[:batch])
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < 2.0:
            trt.backend.infer(x)
            runs += 1
        rates[batch] = runs * batch / (time.perf_counter() - started)
        print(f"TensorRT batch {batch}: {rates[batch]:.0f} images/s")
    assert rates[8] >= 1.5 * rates[1], rates
