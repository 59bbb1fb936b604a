"""The tools' detector (evaluation, benchmarks) is detserve's own pipeline: it finds the demo
scene's objects, with the config read from the model as registering it would."""

from __future__ import annotations

from detserve.inference.standalone import local_detector
from detserve.inference.synthetic import CLASSES, scene
from detserve.service.demo import demo_model_bytes


def test_the_demo_detector_runs_outside_a_service():
    detector = local_detector(demo_model_bytes(), threads=1)
    assert detector.labels == list(CLASSES) and detector.size == (320, 320)
    truth = scene(5)
    found = detector.infer(truth.encode("PNG"))
    assert sorted(found.classes) == sorted(CLASSES[c] for c in truth.classes)
