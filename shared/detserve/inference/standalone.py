"""detserve's own detection pipeline outside any service, for tools: the demo detector's
evaluation and the benchmarks' in-process ceiling run exactly what a CPU worker runs."""

from __future__ import annotations

from detserve.backends.onnxruntime import OnnxRuntimeBackend
from detserve.inference.detector import Detector, Limits
from detserve.service.packages import read_package

NO_LIMIT = 1 << 30


def local_detector(model: bytes, threads: int) -> Detector:
    """A warmed-up Detector for a model file (.onnx or package .zip) on ONNX Runtime with
    `threads` intra-op threads, its config read as registering it would read it."""
    package = read_package(model, None, max_bytes=NO_LIMIT)
    spec = {"input": package.input, "output": package.output}
    detector = Detector(OnnxRuntimeBackend.from_package(package.onnx_bytes, spec, threads=threads),
                        {"labels": package.labels, **spec}, Limits(NO_LIMIT, NO_LIMIT))
    detector.warm_up()
    return detector
