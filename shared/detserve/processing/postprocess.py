"""Decoders (YOLO v8/v5, already-decoded boxes), class-aware NMS, and rescaling to the image.

Every decoder returns boxes as x1, y1, x2, y2 in model-input pixels, with scores and class ids;
`to_image` maps them back to the upright original image as [y_min, x_min, y_max, x_max].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detserve.processing.options import AnswerOptions
from detserve.processing.preprocess import Geometry

Shape = Sequence[int | str | None]
Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (K,4), scores (K,), classes (K,)

TFOD_NAMES = ("detection_boxes", "detection_scores", "detection_classes")


def match_outputs(
    outputs: Sequence[tuple[str, Shape]], decoder: str, num_classes: int | None
) -> dict[str, Any]:
    """Pick the layout of `decoder` that fits the ONNX outputs, or explain what was expected.

    Raises:
        ValueError: the outputs fit no layout of that decoder (the message says what would).
    """
    if decoder == "yolo":
        return _match_yolo(outputs, num_classes)
    if decoder == "boxes":
        return _match_boxes(outputs)
    raise ValueError(f"unknown decoder {decoder!r}: use 'yolo' or 'boxes'")


def _match_yolo(outputs: Sequence[tuple[str, Shape]], nc: int | None) -> dict[str, Any]:
    expected = (
        "the yolo decoder expects one output shaped [1, 4+classes, N] (Ultralytics v8/v11) "
        "or [1, N, 5+classes] (v5)"
    )
    candidates = [(n, s) for n, s in outputs if len(s) == 3]
    if not candidates:
        raise ValueError(f"{expected}; the model's outputs are {_describe(outputs)}")
    name, shape = candidates[0]
    d1 = shape[1] if isinstance(shape[1], int) else 0  # 0: a symbolic dimension
    d2 = shape[2] if isinstance(shape[2], int) else 0
    fits_v8 = d1 > 4 and (nc is None or d1 == 4 + nc)
    fits_v5 = d2 > 5 and (nc is None or d2 == 5 + nc)
    if fits_v8 and fits_v5:  # ambiguous: anchors outnumber channels in every real export
        fits_v8 = d2 > d1
        fits_v5 = not fits_v8
    if fits_v8:
        return {"layout": "v8", "outputs": [name], "num_classes": d1 - 4}
    if fits_v5:
        return {"layout": "v5", "outputs": [name], "num_classes": d2 - 5}
    classes = f" with {nc} classes" if nc is not None else ""
    raise ValueError(f"{expected}{classes}; output {name!r} is {list(shape)}")


def _match_boxes(outputs: Sequence[tuple[str, Shape]]) -> dict[str, Any]:
    names = {n: s for n, s in outputs}
    if all(n in names for n in TFOD_NAMES):
        extra = ["num_detections"] if "num_detections" in names else []
        return {"layout": "tfod", "outputs": [*TFOD_NAMES, *extra]}
    for name, shape in outputs:
        if shape and shape[-1] == 6 and len(shape) in (2, 3):
            return {"layout": "e2e", "outputs": [name]}
    raise ValueError(
        "the boxes decoder expects outputs named detection_boxes, detection_scores and "
        "detection_classes (optionally num_detections), or one [N, 6] / [1, N, 6] output "
        f"(x1, y1, x2, y2, score, class); the model's outputs are {_describe(outputs)}"
    )


def _describe(outputs: Sequence[tuple[str, Shape]]) -> str:
    return ", ".join(f"{n!r} {list(s)}" for n, s in outputs) or "none"


def decode(raw: Sequence[np.ndarray], spec: dict[str, Any], input_hw: tuple[int, int],
           options: AnswerOptions | None = None, labels: Sequence[str] = ()) -> Decoded:
    """Run the decoder named in the version's output spec on one image's raw outputs, with the
    request's options over the version's settings: thresholds before NMS, the cap after."""
    options = options or AnswerOptions()
    layout, offset = spec["layout"], int(spec.get("class_offset", 0))
    base = float(spec.get("score_threshold", 0.25)) if options.score_threshold is None \
        else options.score_threshold
    limits = options.thresholds(labels, base) if options.class_thresholds else None  # by label
    floor = min(base, float(limits.min())) if limits is not None and len(limits) else base
    yolo = layout in ("v8", "v5")
    if yolo:  # these decoders apply the (lowest) threshold themselves
        decoder = _yolo_v8 if layout == "v8" else _yolo_v5
        boxes, scores, classes = decoder(raw[0], floor)
    else:
        boxes, scores, classes = _tfod(raw, input_hw) if layout == "tfod" else _e2e(raw[0])
    if not yolo or limits is not None or options.classes is not None:
        keep = _wanted(scores, classes + offset, limits, base, options.class_ids(labels))
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    if yolo:
        iou = spec.get("iou_threshold", 0.45) if options.iou_threshold is None \
            else options.iou_threshold
        idx = nms(boxes, scores, classes, float(iou))
    else:
        idx = np.argsort(-scores, kind="stable")
    idx = idx[: options.max_detections or int(spec.get("max_detections", 100))]
    return boxes[idx], scores[idx], classes[idx] + offset if offset else classes[idx]


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


def _yolo_v8(out: np.ndarray, threshold: float) -> Decoded:
    pred = out[0] if out.ndim == 3 else out  # (4+nc, N)
    cls_scores = pred[4:]
    # the best score per anchor reduces along whole rows (contiguous); the arg-max, which cannot,
    # runs only over the few anchors past the threshold
    scores = cls_scores.max(axis=0)
    keep = np.flatnonzero(scores >= threshold)
    classes = cls_scores[:, keep].argmax(axis=0)
    return _xywh_to_xyxy(pred[:4, keep].T), scores[keep], classes


def _yolo_v5(out: np.ndarray, threshold: float) -> Decoded:
    pred = out[0] if out.ndim == 3 else out  # (N, 5+nc)
    pred = pred[pred[:, 4] >= threshold]
    cls_scores = pred[:, 5:] * pred[:, 4:5]
    classes = cls_scores.argmax(axis=1)
    scores = np.take_along_axis(cls_scores, classes[:, None], axis=1)[:, 0]
    keep = scores >= threshold  # objectness alone passed: the score is objectness x class score
    return _xywh_to_xyxy(pred[keep, :4]), scores[keep], classes[keep]


def _tfod(raw: Sequence[np.ndarray], input_hw: tuple[int, int]) -> Decoded:
    boxes = np.asarray(raw[0]).reshape(-1, 4).astype(np.float32)
    scores = np.asarray(raw[1]).reshape(-1).astype(np.float32)
    classes = np.asarray(raw[2]).reshape(-1).astype(np.int64)
    if len(raw) > 3:
        n = int(np.asarray(raw[3]).reshape(-1)[0])
        boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
    h, w = input_hw
    # normalised [y1, x1, y2, x2] -> input pixels [x1, y1, x2, y2]
    xyxy = boxes[:, [1, 0, 3, 2]] * np.asarray([w, h, w, h], dtype=np.float32)
    return xyxy, scores, classes


def _e2e(out: np.ndarray) -> Decoded:
    pred = np.asarray(out).reshape(-1, 6).astype(np.float32)
    return pred[:, :4], pred[:, 4], pred[:, 5].astype(np.int64)


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    half = xywh[:, 2:4] / 2
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1).astype(np.float32, copy=False)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Class-aware greedy NMS; returns kept indices, highest score first.

    Boxes of different classes are shifted apart (by more than all the boxes span, negative
    coordinates included) so that one pass never suppresses across classes; each step is
    vectorised over all remaining boxes.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    offset = classes.astype(np.float32)[:, None] * (float(boxes.max() - boxes.min()) + 1.0)
    # one contiguous row per coordinate: each step gathers from four 1-D arrays
    x1, y1, x2, y2 = np.ascontiguousarray((boxes + offset).T)
    # np.maximum(x, 0), not x.clip(0): the same values, at a fraction of clip's fixed cost
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        inter = (np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
                 * np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0))
        # IoU <= iou without the division (and kept, as before, where both boxes are empty)
        order = rest[inter <= iou * (areas[i] + areas[rest] - inter)]
    return np.asarray(keep, dtype=np.int64)


def to_image(
    boxes: np.ndarray, geometry: Geometry, scale: float, width: int, height: int
) -> np.ndarray:
    """Input-pixel x1,y1,x2,y2 to original-image [y_min, x_min, y_max, x_max], clipped."""
    if len(boxes) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    # one multiply-add and two clamps on the reordered boxes (np.maximum/np.minimum: clip's fixed
    # cost is several times theirs on arrays this small)
    gain_y, gain_x = scale / geometry.gain_y, scale / geometry.gain_x
    factor = np.asarray([gain_y, gain_x, gain_y, gain_x])
    shift = np.asarray([geometry.pad_y * gain_y, geometry.pad_x * gain_x] * 2)
    yx = boxes[:, [1, 0, 3, 2]] * factor - shift
    return np.minimum(np.maximum(yx, 0), np.asarray([height, width, height, width]))
