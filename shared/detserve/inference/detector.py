"""Detector: decode image -> pre-process -> backend.infer -> decode outputs -> Detections."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from detserve.backends.base import Backend
from detserve.errors import DetserveError, ModelLoadError, engine_words
from detserve.processing import image, postprocess, preprocess
from detserve.processing.options import PLAIN, AnswerOptions, format_boxes


@dataclass(frozen=True)
class Detections:
    """Boxes on the original image (by default pixels [y_min, x_min, y_max, x_max]), sorted by
    score."""

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
class Prepared:
    """One image ready for the model, and what is needed to map its boxes back."""

    tensor: np.ndarray
    geometry: preprocess.Geometry
    decoded: image.DecodedImage


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
        self.tensor = preprocess.TensorSpec.from_spec(self.input)
        self.limits = limits

    def infer(self, data: bytes, options: AnswerOptions | None = None) -> Detections:
        """Detect objects in one uploaded image (raises InvalidImage / ImageTooLarge)."""
        prepared = self.prepare(data)
        return self.finish(self.backend.infer(prepared.tensor), prepared, options)

    def prepare(self, data: bytes) -> Prepared:
        """Decode and pre-process one image into a batch-of-one tensor."""
        return self.to_input(self.decode(data))

    def decode(self, data: bytes) -> image.DecodedImage:
        """The upload decoded upright, a large JPEG at no less than twice the model's size."""
        return image.decode(
            data, max_bytes=self.limits.max_bytes, max_pixels=self.limits.max_pixels,
            target=max(self.size),
        )

    def to_input(self, decoded: image.DecodedImage) -> Prepared:
        """A decoded image resized and normalised into the model's batch-of-one tensor."""
        pixels, geometry = preprocess.resize(decoded.image, self.size, self.input["resize"])
        return Prepared(self.tensor(pixels), geometry, decoded)

    def infer_batch(self, prepared: Sequence[Prepared]) -> list[list[np.ndarray]]:
        """Run several prepared images as one batch; outputs split back per image."""
        raw = self.backend.infer(np.concatenate([p.tensor for p in prepared]))
        return [[out[i : i + 1] for out in raw] for i in range(len(prepared))]

    @cached_property
    def decoding(self) -> postprocess.Decoding:
        """The output spec read once; on first use, so that a decoder missing from this process
        fails each request (ValueError), as it always has, not the load."""
        return postprocess.Decoding.from_spec(self.output)

    def finish(self, raw: Sequence[np.ndarray], prepared: Prepared,
               options: AnswerOptions | None = None) -> Detections:
        """Decode one image's raw outputs into boxes on the original image, as the request's
        options ask."""
        decoded, options = prepared.decoded, options or PLAIN
        boxes, scores, classes = self.decoding(raw, self.size, options, self.labels)
        rescaled = postprocess.to_image(boxes, prepared.geometry, decoded.scale, decoded.width,
                                        decoded.height)
        shaped = format_boxes(rescaled.astype(np.float64, copy=False), options.box_format,
                              decoded.width, decoded.height)
        labels, known = self.labels, len(self.labels)
        ids = classes.astype(np.int64, copy=False).tolist()
        return Detections(
            classes=[labels[c] if 0 <= c < known else str(c) for c in ids],
            boxes=shaped.round(6 if options.box_format.endswith("_norm") else 2).tolist(),
            scores=scores.astype(np.float64).round(5).tolist(),
        )

    def warm_up(self) -> None:
        """One inference on a blank input so the first real request pays no lazy init.

        Raises:
            ModelLoadError: the model cannot run on an input of the size it declares.
        """
        h, w = self.size
        blank = np.full((h, w, 3), 114, dtype=np.uint8)
        try:
            self.backend.infer(self.tensor(blank))
        except DetserveError:
            raise
        except Exception as exc:  # each engine raises its own types; its words name the problem
            raise ModelLoadError(f"the model failed a test inference on a blank {w}x{h} image: "
                                 f"{engine_words(exc)}; check its input size and layout (config "
                                 "input.size, input.layout) and upload it as a new version") from exc
