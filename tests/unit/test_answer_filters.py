"""The request's class thresholds and classes filter as post-processing applies them, on known
end-to-end rows (x1, y1, x2, y2, score, class: no NMS in the way)."""

from __future__ import annotations

import numpy as np

from detserve.processing.options import AnswerOptions
from detserve.processing.postprocess import decode

LABELS = ["a", "b", "c"]
SPEC = {"decoder": "boxes", "layout": "e2e", "score_threshold": 0.25}


def rows(*found: tuple[float, int]) -> list[np.ndarray]:
    """One box per (score, class), each at its own place (x1 = its index)."""
    return [np.asarray([[[i, 0, i + 1, 1, score, cls] for i, (score, cls) in enumerate(found)]],
                       dtype=np.float32)]


def kept(raw: list[np.ndarray], options: AnswerOptions, spec: dict = SPEC,
         labels: list[str] = LABELS) -> list[tuple[float, int]]:
    boxes, scores, classes = decode(raw, spec, (64, 64), options, labels)
    return sorted((float(b[0]), int(c)) for b, c in zip(boxes, classes, strict=True))


def test_a_class_threshold_holds_for_its_class_only_and_a_score_at_it_passes():
    raw = rows((0.5, 0), (0.5, 1), (0.3, 2), (0.75, 0), (0.3, 3))  # class 3: beyond the labels
    options = AnswerOptions(class_thresholds={"a": 0.75, "b": 0.5})
    # a: 0.5 under its 0.75, 0.75 at it; b: 0.5 at its 0.5; c and the unlabelled class 3: 0.25
    assert kept(raw, options) == [(1.0, 1), (2.0, 2), (3.0, 0), (4.0, 3)]


def test_a_class_threshold_below_the_global_one_lets_its_class_through():
    raw = rows((0.2, 0), (0.2, 1))
    assert kept(raw, AnswerOptions(class_thresholds={"a": 0.125})) == [(0.0, 0)]


def test_the_classes_filter_keeps_only_those_classes():
    raw = rows((0.9, 0), (0.8, 1), (0.7, 2))
    assert kept(raw, AnswerOptions(classes=("b", "c"))) == [(1.0, 1), (2.0, 2)]
    assert kept(raw, AnswerOptions(classes=("a",), class_thresholds={"a": 0.95})) == []


def test_filters_name_classes_after_the_class_offset():
    # a model without the background class its labels start with: its class 0 is label 1
    spec = {**SPEC, "class_offset": 2}
    labels = ["background", "other", "a", "b"]
    raw = rows((0.9, 0), (0.8, 1))
    assert kept(raw, AnswerOptions(classes=("a",)), spec, labels) == [(0.0, 2)]
    assert kept(raw, AnswerOptions(class_thresholds={"b": 0.85}), spec, labels) == [(0.0, 2)]


def test_a_score_at_the_threshold_is_kept():
    assert kept(rows((0.25, 0), (0.125, 1)), AnswerOptions()) == [(0.0, 0)]


def test_the_boxes_decoder_keeps_what_the_models_own_nms_kept():
    # two boxes of one class overlapping far past the default iou_threshold: the model chose both
    raw = [np.asarray([[[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 9, 0.8, 0]]], dtype=np.float32)]
    boxes, scores, _ = decode(raw, SPEC, (64, 64), AnswerOptions(), LABELS)
    assert len(boxes) == 2 and scores.tolist() == [np.float32(0.9), np.float32(0.8)]


def test_a_yolo_v8_score_at_the_threshold_is_kept():
    out = np.zeros((1, 6, 2), dtype=np.float32)  # 4 + 2 classes, 2 anchors
    out[0, :, 0] = [10, 10, 4, 4, 0.25, 0]
    out[0, :, 1] = [30, 30, 4, 4, 0, 0.125]
    spec = {"decoder": "yolo", "layout": "v8", "score_threshold": 0.25}
    boxes, scores, classes = decode([out], spec, (64, 64), AnswerOptions(), LABELS)
    assert boxes.tolist() == [[8, 8, 12, 12]] and classes.tolist() == [0]
