"""Building TensorRT engines from ONNX, on TensorRT 10 and 11, with the build's own progress and words.

TensorRT 11 removed weakly typed networks: no BuilderFlag.FP16, no Builder.platform_has_fast_fp16.
There the engine's precision is the ONNX graph's own (an fp16 export builds fp16, an fp32 export
fp32), so the precision reported is the one actually built, never the one asked for. Imported
only by detserve_worker_gpu.tensorrt, after its guard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx
import pycuda.driver as cuda
import tensorrt as trt

from detserve.errors import ModelLoadError
from detserve.service.progress import path_free

log = logging.getLogger("detserve.inference.worker.gpu")
MAJOR = int(trt.__version__.split(".")[0])


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

    def label(self) -> str:
        return f"batch {self.min}/{self.opt}/{self.max}"


def gpu_identity() -> tuple[str, str]:
    """The GPU's model name and compute capability, e.g. ("NVIDIA H100", "9.0")."""
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return device.name(), f"{major}.{minor}"


def engine_key(onnx_sha256: str, precision: str, profile: Profile | None) -> str:
    """Everything an engine depends on: a change to any of them builds a new one."""
    gpu, capability = gpu_identity()
    parts = {"onnx": onnx_sha256, "tensorrt": trt.__version__, "tensorrt_major": MAJOR, "gpu": gpu,
             "compute_capability": capability, "precision": precision,
             "profile": [profile.min, profile.opt, profile.max] if profile else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def device_memory_bytes(engine: Any) -> int:
    """What one execution context of `engine` takes on the device (11 kept only the _v2 name)."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(size if size is not None else engine.device_memory_size)


def graph_precision(onnx_bytes: bytes) -> str:
    """"fp16" when the ONNX graph carries fp16 weights (an fp16 export), else "fp32"."""
    graph = onnx.load_from_string(onnx_bytes).graph
    half = onnx.TensorProto.FLOAT16
    return "fp16" if any(t.data_type == half for t in graph.initializer) else "fp32"


def planned_precision(onnx_bytes: bytes, wanted: str, builder: Any) -> str:
    """The precision the build will give: 10 honours "fp16" where the GPU has fast fp16; 11 and an
    fp16 graph give the graph's own."""
    graph = graph_precision(onnx_bytes)
    if MAJOR >= 11 and wanted == "fp16" and graph == "fp32":
        log.warning("TensorRT %s builds the ONNX graph's own precision: this fp32 export gives an "
                    "fp32 engine (export the model in fp16 for an fp16 one)", trt.__version__)
    if MAJOR >= 11 or graph == "fp16":
        return graph
    return "fp16" if wanted == "fp16" and builder.platform_has_fast_fp16 else "fp32"


class BuildLog(trt.ILogger):  # type: ignore[misc]
    """Keeps the builder's errors so that a failed build says why in its own words."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def log(self, severity: Any, msg: str) -> None:
        if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
            with self._lock:
                self.errors.append(path_free(str(msg)))
        elif severity == trt.ILogger.Severity.WARNING:
            log.warning("TensorRT: %s", path_free(str(msg)))


class BuildProgress(trt.IProgressMonitor):  # type: ignore[misc]
    """Turns the builder's nested phases and steps into one fraction 0..1 for `report`.

    TensorRT may call it from several of its own threads, hence the lock.
    """

    def __init__(self, report: Callable[[float], None]) -> None:
        trt.IProgressMonitor.__init__(self)
        self.report = report
        self._phases: dict[str, list[Any]] = {}  # name -> [parent, steps, done]
        self._lock = threading.Lock()

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            self._phases[phase_name] = [parent_phase, max(1, int(num_steps)), 0]

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            if phase_name in self._phases:
                self._phases[phase_name][2] = int(step) + 1
            fraction = self._fraction(None)
        self.report(fraction)
        return True  # never cancel: a stop of the service wins at the end of the deploy

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            self._phases.pop(phase_name, None)

    def _fraction(self, parent: str | None) -> float:
        """Progress of the first phase under `parent`, its open child phase counted in."""
        for name, (up, steps, done) in self._phases.items():
            if up == parent:
                return min(1.0, (done + self._fraction(name)) / steps)
        return 0.0


def build_engine(onnx_bytes: bytes, precision: str, profile: Profile | None, workspace_bytes: int,
                 report: Callable[[str, float], None]) -> tuple[bytes, str]:
    """Parse the ONNX file and build a serialized engine; returns it and the precision built.

    `report(label, fraction)` is told the build's label once and then its progress.

    Raises:
        ModelLoadError: with the parser's or builder's own words when the model does not build.
    """
    logger = BuildLog()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch in 10; strongly typed, the only kind, in 11
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(path_free(str(parser.get_error(i))) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    used = planned_precision(onnx_bytes, precision, builder)
    if MAJOR < 11 and used == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if profile is not None:
        tensor = network.get_input(0)
        opt_profile = builder.create_optimization_profile()
        rest = tuple(tensor.shape)[1:]
        opt_profile.set_shape(tensor.name, (profile.min, *rest), (profile.opt, *rest),
                              (profile.max, *rest))
        config.add_optimization_profile(opt_profile)
    label = f"{used}, {profile.label() if profile else 'batch 1'}"
    report(label, 0.0)
    monitor = BuildProgress(lambda fraction: report(label, fraction))
    config.progress_monitor = monitor  # kept referenced by `monitor` for the whole build
    log.info("building a TensorRT %s engine (%s); this can take minutes", trt.__version__, label)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        words = "; ".join(logger.errors) or "no reason given (see the worker log)"
        raise ModelLoadError(f"TensorRT could not build an engine for this model: {words}")
    return bytes(serialized), used
