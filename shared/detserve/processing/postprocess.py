"""Decoding by the version's decoder (see decoders.py), class-aware NMS, rescaling to the image.

Every decoder returns boxes as x1, y1, x2, y2 in model-input pixels, with scores and class ids;
`to_image` maps them back to the upright original image as [y_min, x_min, y_max, x_max].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detserve.processing import decoders
from detserve.processing.decoders import Decoded, Shape
from detserve.processing.options import PLAIN, AnswerOptions
from detserve.processing.preprocess import Geometry


def match_outputs(outputs: Sequence[tuple[str, Shape]], decoder: str, num_classes: int | None,
                  options: dict[str, Any] | None = None,
                  input_hw: tuple[int, int] | None = None) -> dict[str, Any]:
    """The output spec of the decoder named `decoder` for these ONNX outputs (see Decoder.match),
    checked against the model's input size `input_hw` where the decoder can (check_input).

    Raises:
        ValueError: no decoder has that name, or the outputs or options fit it not (the message
            says what would).
    """
    head = decoders.get(decoder)
    spec = head.match(outputs, num_classes, dict(options or {}))
    check = getattr(head, "check_input", None)  # optional: a plugin's decoder may not have it
    if input_hw is not None and check is not None:
        check(outputs, spec, input_hw)
    return spec


@dataclass(frozen=True)
class Decoding:
    """A version's output spec read once, when its model loads: the decoder and the version's
    own thresholds and cap (each request's options may override them)."""

    spec: dict[str, Any]
    head: decoders.Decoder
    class_offset: int
    score_threshold: float
    iou_threshold: float
    max_detections: int

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Decoding:
        """Raises ValueError when the spec's decoder is not installed (see decoders.get)."""
        # a version stored before the registry has no decoder name, only its layout
        name = spec.get("decoder") or ("boxes" if spec.get("layout") in ("tfod", "e2e") else "yolo")
        return cls(spec, decoders.get(name), int(spec.get("class_offset", 0)),
                   float(spec.get("score_threshold", 0.25)), float(spec.get("iou_threshold", 0.45)),
                   int(spec.get("max_detections", 100)))

    def __call__(self, raw: Sequence[np.ndarray], input_hw: tuple[int, int],
                 options: AnswerOptions | None = None, labels: Sequence[str] = ()) -> Decoded:
        """One image's raw outputs decoded with the request's options over the version's
        settings: thresholds before NMS, the cap after."""
        options = options or PLAIN
        offset = self.class_offset
        base = self.score_threshold if options.score_threshold is None else options.score_threshold
        limits = options.thresholds(labels, base) if options.class_thresholds else None  # by label
        floor = min(base, float(limits.min())) if limits is not None and len(limits) else base
        boxes, scores, classes = self.head.decode(raw, self.spec, input_hw, floor)
        if limits is not None or options.classes is not None:
            keep = _wanted(scores, classes + offset, limits, base, options.class_ids(labels))
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        if self.head.nms:
            iou = self.iou_threshold if options.iou_threshold is None else options.iou_threshold
            idx = nms(boxes, scores, classes, float(iou))
        else:
            idx = np.argsort(-scores, kind="stable")
        idx = idx[: options.max_detections or self.max_detections]
        return boxes[idx], scores[idx], classes[idx] + offset if offset else classes[idx]


def decode(raw: Sequence[np.ndarray], spec: dict[str, Any], input_hw: tuple[int, int],
           options: AnswerOptions | None = None, labels: Sequence[str] = ()) -> Decoded:
    """Run the decoder named in the version's output spec on one image's raw outputs, with the
    request's options over the version's settings (a loaded model keeps its `Decoding`)."""
    return Decoding.from_spec(spec)(raw, input_hw, options, labels)


def _wanted(scores: np.ndarray, ids: np.ndarray, limits: np.ndarray | None, base: float,
            keep_ids: np.ndarray | None) -> np.ndarray:
    """The mask of detections over their class's threshold and of a class the caller wants."""
    limit = np.full(len(ids), base, dtype=np.float32)
    if limits is not None:
        inside = (ids >= 0) & (ids < len(limits))
        limit[inside] = limits[ids[inside]]
    mask: np.ndarray = scores >= limit
    if keep_ids is not None:
        mask &= np.isin(ids, keep_ids)
    return mask


# Candidates compared at a time: each block's pairwise matrices stay small (64 KB of float32),
# which keeps them in cache and out of the allocator's large-block path; a request that lets
# thousands of anchors through pays in time, block by block, never in memory.
NMS_BLOCK = 128


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Class-aware greedy NMS; returns kept indices, highest score first.

    Boxes of different classes are shifted apart (by more than all the boxes span, negative
    coordinates included) so that no box ever suppresses one of another class. The boxes are
    taken in score order, a block at a time: a block first loses the boxes that one kept before
    it overlaps, then all its pairwise overlaps are decided in one vectorised pass, and the greedy
    walk over them costs a few small operations per box kept.
    """
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    offset = classes.astype(np.float32)[:, None] * (float(boxes.max() - boxes.min()) + 1.0)
    # one contiguous row per coordinate, in score order
    x1, y1, x2, y2 = np.ascontiguousarray((boxes + offset)[order].T)
    coords = (x1, y1, x2, y2, np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0))
    position = np.arange(n)
    kept: list[int] = []  # positions in score order
    for start in range(0, n, NMS_BLOCK):
        block: slice | np.ndarray = slice(start, start + NMS_BLOCK)
        if kept:
            block = position[block][_apart(coords, np.asarray(kept), block, iou).all(axis=0)]
        apart, ids = _apart(coords, block, block, iou), position[block]
        rest = position[: len(ids)]
        while rest.size:
            i, rest = rest[0], rest[1:]
            kept.append(ids[i])
            rest = rest[apart[i, rest]]
    return order[kept]


def _apart(coords: tuple[np.ndarray, ...], rows: slice | np.ndarray, cols: slice | np.ndarray,
           iou: float) -> np.ndarray:
    """[rows, cols]: whether each pair of boxes overlaps by no more than `iou`, decided as
    inter <= iou * union in the boxes' precision (so, as before, kept where both are empty)."""
    x1, y1, x2, y2, areas = coords
    # in place on two matrices: each temporary of this size would be a fresh allocation
    w = np.minimum(x2[rows, None], x2[cols])
    w -= np.maximum(x1[rows, None], x1[cols])
    np.maximum(w, 0, out=w)
    h = np.minimum(y2[rows, None], y2[cols])
    h -= np.maximum(y1[rows, None], y1[cols])
    np.maximum(h, 0, out=h)
    w *= h  # the intersection
    np.add(areas[rows, None], areas[cols], out=h)
    h -= w
    h *= iou
    return w <= h


def to_image(
    boxes: np.ndarray, geometry: Geometry, scale: float, width: int, height: int
) -> np.ndarray:
    """Input-pixel x1,y1,x2,y2 to original-image [y_min, x_min, y_max, x_max], clipped."""
    if len(boxes) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    # one multiply-add and two clamps on the reordered boxes, in place (np.maximum/np.minimum:
    # clip's fixed cost is several times theirs on arrays this small)
    gain_y, gain_x = scale / geometry.gain_y, scale / geometry.gain_x
    yx = boxes.take([1, 0, 3, 2], axis=1) * np.asarray([gain_y, gain_x, gain_y, gain_x])
    yx -= np.asarray([geometry.pad_y * gain_y, geometry.pad_x * gain_x] * 2)
    np.maximum(yx, 0, out=yx)
    return np.minimum(yx, np.asarray([height, width, height, width]), out=yx)
