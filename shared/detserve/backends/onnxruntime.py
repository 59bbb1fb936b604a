"""ONNX Runtime on the CPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from detserve.errors import ModelLoadError, engine_words


class OnnxRuntimeBackend:
    """An InferenceSession with deliberate options: fixed intra-op threads, full graph opts."""

    def __init__(self, session: ort.InferenceSession, input_name: str, outputs: list[str]) -> None:
        self.session = session
        self.input_name = input_name
        self.outputs = outputs

    @classmethod
    def from_package(
        cls, onnx_bytes: bytes, spec: dict[str, Any], *, threads: int = 1, **_: Any
    ) -> OnnxRuntimeBackend:
        """Create the session; a model ONNX Runtime cannot load raises ModelLoadError."""
        options = ort.SessionOptions()
        # One worker process per core already saturates the CPU; more threads only contend.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises several unrelated types for a bad model
            raise ModelLoadError(f"ONNX Runtime could not load the model: {engine_words(exc)}; fix the model "
                                 "(or export it again) and upload it as a new version") from exc
        return cls(session, spec["input"]["name"], list(spec["output"]["outputs"]))

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(self.outputs, {self.input_name: batch}))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
