"""Ultralytics YOLO heads: v8/v11 ([1, 4+classes, N]) and v5 ([1, N, 5+classes]), xywh boxes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detserve.processing.decoders import Decoded, Shape, describe


class Yolo:
    nms = True

    def match(self, outputs: Sequence[tuple[str, Shape]], num_classes: int | None,
              options: dict[str, Any]) -> dict[str, Any]:
        expected = (
            "the yolo decoder expects one output shaped [1, 4+classes, N] (Ultralytics v8/v11) "
            "or [1, N, 5+classes] (v5)"
        )
        candidates = [(n, s) for n, s in outputs if len(s) == 3]
        if not candidates:
            raise ValueError(f"{expected}; the model's outputs are {describe(outputs)}")
        name, shape = candidates[0]
        d1 = shape[1] if isinstance(shape[1], int) else 0  # 0: a symbolic dimension
        d2 = shape[2] if isinstance(shape[2], int) else 0
        nc = num_classes
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

    def decode(self, raw: Sequence[np.ndarray], spec: dict[str, Any], input_hw: tuple[int, int],
               threshold: float) -> Decoded:
        return (_v8 if spec["layout"] == "v8" else _v5)(raw[0], threshold)


def _v8(out: np.ndarray, threshold: float) -> Decoded:
    pred = out[0] if out.ndim == 3 else out  # (4+nc, N)
    cls_scores = pred[4:]
    # the best score per anchor reduces along whole rows (contiguous); the arg-max, which cannot,
    # runs only over the few anchors past the threshold, gathered by take (a fancy index on the
    # second axis costs several times more)
    scores = np.maximum.reduce(cls_scores, axis=0)
    keep = (scores >= threshold).nonzero()[0]
    classes = cls_scores.take(keep, axis=1).argmax(axis=0)
    return xywh_to_xyxy(pred[:4].take(keep, axis=1).T), scores[keep], classes


def _v5(out: np.ndarray, threshold: float) -> Decoded:
    pred = out[0] if out.ndim == 3 else out  # (N, 5+nc)
    pred = pred[pred[:, 4] >= threshold]
    cls_scores = pred[:, 5:] * pred[:, 4:5]
    classes = cls_scores.argmax(axis=1)
    scores = np.take_along_axis(cls_scores, classes[:, None], axis=1)[:, 0]
    keep = scores >= threshold  # objectness alone passed: the score is objectness x class score
    return xywh_to_xyxy(pred[keep, :4]), scores[keep], classes[keep]


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    half = xywh[:, 2:4] / 2
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1).astype(np.float32, copy=False)
