"""The tools' detector (evaluation, benchmarks) is detserve's own pipeline: it finds the demo
scene's objects, with the config read from the model as registering it would."""

from __future__ import annotations

import numpy as np

from detserve.inference.standalone import local_detector
from detserve.inference.synthetic import CLASSES, iou, scene
from detserve.service.demo import demo_model_bytes


def test_the_demo_detector_runs_outside_a_service():
    detector = local_detector(demo_model_bytes(), threads=1)
    assert detector.labels == list(CLASSES) and detector.size == (320, 320)
    truth = scene(5)
    found = detector.infer(truth.encode("PNG"))
    assert sorted(found.classes) == sorted(CLASSES[c] for c in truth.classes)
    # each true box found once, of its class, where it is (boxes are [y_min, x_min, y_max, x_max])
    boxes = np.asarray(found.boxes, dtype=np.float32).reshape(-1, 4)[:, [1, 0, 3, 2]]
    overlaps = iou(truth.boxes, boxes)
    for i, cls in enumerate(truth.classes):
        hits = np.nonzero(overlaps[i] >= 0.5)[0]
        assert len(hits) == 1 and found.classes[hits[0]] == CLASSES[cls], (i, overlaps[i])
