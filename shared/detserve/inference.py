"""Detector: decode image -> pre-process -> backend.infer -> decode outputs -> Detections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detserve.backends.base import Backend
from detserve.processing import image, postprocess, preprocess


@dataclass(frozen=True)
class Detections:
    """Boxes in original-image pixels [y_min, x_min, y_max, x_max], sorted by score."""

    classes: list[str]
    boxes: list[list[float]]
    scores: list[float]

    def to_dict(self) -> dict[str, Any]:
        """The contract's result shape."""
        return {
            "detection_classes": self.classes,
            "detection_boxes": self.boxes,
            "detection_scores": self.scores,
        }


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int


class Detector:
    """One loaded model version, ready to answer images."""

    def __init__(self, backend: Backend, version: dict[str, Any], limits: Limits) -> None:
        self.backend = backend
        self.labels: list[str] = list(version["labels"])
        self.input: dict[str, Any] = version["input"]
        self.output: dict[str, Any] = version["output"]
        self.size = (int(self.input["size"][0]), int(self.input["size"][1]))
        self.limits = limits

    def infer(self, data: bytes) -> Detections:
        """Detect objects in one uploaded image (raises InvalidImage / ImageTooLarge)."""
        decoded = image.decode(
            data, max_bytes=self.limits.max_bytes, max_pixels=self.limits.max_pixels,
            target=max(self.size),
        )
        pixels, geometry = preprocess.resize(decoded.pixels, self.size, self.input["resize"])
        raw = self.backend.infer(preprocess.to_tensor(pixels, self.input))
        boxes, scores, classes = postprocess.decode(raw, self.output, self.size)
        rescaled = postprocess.to_image(boxes, geometry, decoded.scale, decoded.width, decoded.height)
        return Detections(
            classes=[self._label(int(c)) for c in classes],
            boxes=np.round(rescaled.astype(np.float64), 2).tolist(),
            scores=np.round(scores.astype(np.float64), 5).tolist(),
        )

    def warm_up(self) -> None:
        """One inference on a blank input so the first real request pays no lazy init."""
        h, w = self.size
        blank = np.full((h, w, 3), 114, dtype=np.uint8)
        self.backend.infer(preprocess.to_tensor(blank, self.input))

    def _label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)
