"""Already-decoded boxes: TF Object Detection API outputs, or one [N, 6] end-to-end output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detserve.processing.decoders import Decoded, Shape, describe

TFOD_NAMES = ("detection_boxes", "detection_scores", "detection_classes")


class Boxes:
    nms = False  # the model has done it

    def match(self, outputs: Sequence[tuple[str, Shape]], num_classes: int | None,
              options: dict[str, Any]) -> dict[str, Any]:
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
            f"(x1, y1, x2, y2, score, class); the model's outputs are {describe(outputs)}"
        )

    def decode(self, raw: Sequence[np.ndarray], spec: dict[str, Any], input_hw: tuple[int, int],
               threshold: float) -> Decoded:
        boxes, scores, classes = _tfod(raw, input_hw) if spec["layout"] == "tfod" else _e2e(raw[0])
        keep = scores >= threshold
        return boxes[keep], scores[keep], classes[keep]


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
