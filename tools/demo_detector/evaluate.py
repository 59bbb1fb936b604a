"""mAP@0.5 of the demo detector on held-out synthetic scenes, through detserve's own pipeline
(package checks, letterbox, ONNX Runtime, yolo decoder, NMS, rescale), at its served settings.

    python tools/demo_detector/evaluate.py [--model PATH] [--images 500]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "shared"))

from detserve.inference.standalone import local_detector  # noqa: E402
from detserve.inference.synthetic import CLASSES, average_precision, iou, scene  # noqa: E402


def evaluate(model_bytes: bytes, images: int, iou_threshold: float = 0.5) -> dict[str, float]:
    detector = local_detector(model_bytes, threads=2)
    rows: dict[int, list[tuple[int, float, bool]]] = {c: [] for c in range(len(CLASSES))}
    positives = dict.fromkeys(range(len(CLASSES)), 0)
    for seed in range(images):
        rng = np.random.default_rng(seed + 777)
        s = scene(seed, int(rng.integers(224, 481)), int(rng.integers(224, 481)))
        found = detector.infer(s.encode("PNG"))
        boxes = np.asarray(found.boxes, dtype=np.float32).reshape(-1, 4)[:, [1, 0, 3, 2]]
        classes = np.asarray([CLASSES.index(c) for c in found.classes], dtype=np.int64)
        for c in range(len(CLASSES)):
            truth = s.boxes[s.classes == c]
            positives[c] += len(truth)
            mine = np.nonzero(classes == c)[0]  # already sorted by score
            taken = np.zeros(len(truth), dtype=bool)
            overlaps = iou(boxes[mine], truth) if len(truth) and len(mine) else np.zeros((len(mine), 0))
            for k, idx in enumerate(mine):
                hit = False
                if overlaps.shape[1]:
                    j = int(np.argmax(np.where(taken, -1, overlaps[k])))
                    if not taken[j] and overlaps[k, j] >= iou_threshold:
                        taken[j] = hit = True
                rows[c].append((seed, found.scores[idx], hit))
    per_class = {CLASSES[c]: average_precision(rows[c], positives[c]) for c in rows}
    return {**per_class, "mAP@0.5": float(np.nanmean(list(per_class.values())))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=ROOT / "shared/detserve/models/demo-detector.onnx")
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    result = evaluate(args.model.read_bytes(), args.images)
    for name, value in result.items():
        print(f"{name:>10}: {value:.4f}")


if __name__ == "__main__":
    main()
