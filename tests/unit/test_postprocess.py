"""Decoders' layout matching, NMS and rescaling (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from detserve.processing.postprocess import NMS_BLOCK, decode, match_outputs, nms, to_image
from detserve.processing.preprocess import Geometry, resize


@pytest.mark.parametrize("shape,nc,layout", [
    ([1, 84, 8400], 80, "v8"), ([1, 84, 8400], None, "v8"), ([1, 25200, 85], 80, "v5"),
    ([1, 25200, 85], None, "v5"), (["N", 7, 4], 3, "v8"), ([1, 7, 4], None, "v8"), ([1, 4, 8], None, "v5"),
    (["batch", 84, "anchors"], None, "v8"),
])
def test_yolo_layouts(shape, nc, layout):
    assert match_outputs([("out", shape)], "yolo", nc)["layout"] == layout


@pytest.mark.parametrize("outputs,layout", [
    ([("detection_boxes", [1, 100, 4]), ("detection_scores", [1, 100]),
      ("detection_classes", [1, 100]), ("num_detections", [1])], "tfod"),
    ([("dets", [1, 300, 6])], "e2e"), ([("dets", [300, 6])], "e2e"),
])
def test_boxes_layouts(outputs, layout):
    assert match_outputs(outputs, "boxes", None)["layout"] == layout


def test_mismatch_says_what_was_expected():
    with pytest.raises(ValueError, match=r"\[1, 4\+classes, N\].*'out' is \[1, 84, 8400\]"):
        match_outputs([("out", [1, 84, 8400])], "yolo", 3)


def test_nms_is_per_class_and_ordered():
    boxes = np.asarray([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.asarray([0.8, 0.9, 0.7, 0.5], np.float32)
    classes = np.asarray([0, 0, 1, 0])
    assert nms(boxes, scores, classes, 0.45).tolist() == [1, 2, 3]


def test_letterbox_round_trip():
    pixels = np.zeros((100, 200, 3), np.uint8)
    out, g = resize(pixels, (64, 64), "letterbox")
    assert out.shape == (64, 64, 3) and g.pad_y == 16 and g.pad_x == 0
    back = to_image(np.asarray([[0, 16, 64, 48]], np.float32), g, 1.0, 200, 100)
    np.testing.assert_allclose(back, [[0, 0, 100, 200]], atol=1e-4)


def test_boxes_are_clipped_to_the_image():
    back = to_image(np.asarray([[-10, -10, 500, 500]], np.float32), Geometry(1, 1, 0, 0), 1.0, 64, 32)
    np.testing.assert_allclose(back, [[0, 0, 32, 64]])


def test_nms_never_suppresses_across_classes_even_for_boxes_around_the_origin():
    # boxes that reach into negative coordinates (YOLO boxes at an image edge): two identical
    # boxes of different classes must both be kept, whatever the threshold
    boxes = np.asarray([[-20, -20, 20, 20], [-20, -20, 20, 20], [-15, -18, 22, 19]], dtype=np.float32)
    classes = np.asarray([0, 1, 2])
    for iou in (0.0, 0.1, 0.45):
        keep = nms(boxes, np.asarray([0.9, 0.8, 0.7], dtype=np.float32), classes, iou)
        assert sorted(keep.tolist()) == [0, 1, 2], iou


def test_nms_over_several_blocks_keeps_what_one_greedy_walk_keeps():
    # given more candidates than one block, on integer boxes with an IoU threshold of 1/2, where
    # float32 and exact integer arithmetic decide every pair alike
    rng = np.random.default_rng(0)
    n = 3 * NMS_BLOCK + 17
    xy = rng.integers(0, 300, (n, 2))
    boxes = np.concatenate([xy, xy + rng.integers(1, 60, (n, 2))], axis=1)
    scores = rng.permutation(n) / n  # distinct: one order
    classes = rng.integers(0, 3, n)

    def overlaps(a: int, b: int) -> bool:  # IoU > 1/2, in integers
        (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = boxes[a].tolist(), boxes[b].tolist()
        inter = max(0, min(ax2, bx2) - max(ax1, bx1)) * max(0, min(ay2, by2) - max(ay1, by1))
        union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
        return 2 * inter > union

    # when
    kept = nms(boxes.astype(np.float32), scores.astype(np.float32), classes, 0.5).tolist()
    # then: the plain greedy walk, best score first, each class on its own
    walk: list[int] = []
    for j in np.argsort(-scores).tolist():
        if not any(classes[k] == classes[j] and overlaps(k, j) for k in walk):
            walk.append(j)
    assert kept == walk and len(walk) > NMS_BLOCK


def v5(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)[None]


def test_v5_scores_are_objectness_times_class_score():
    # x, y, w, h, objectness, then one score per class
    raw = v5([[32, 32, 10, 10, 0.5, 0.2, 0.8], [10, 10, 4, 4, 0.5, 1.0, 0.0], [50, 50, 4, 4, 0.4, 1.0, 1.0]])
    spec = {"layout": "v5", "score_threshold": 0.3, "iou_threshold": 0.45}
    boxes, scores, classes = decode([raw], spec, (64, 64))
    assert scores.tolist() == pytest.approx([0.5, 0.4, 0.4]) and classes.tolist() == [0, 1, 0]
    assert boxes.tolist() == [[8, 8, 12, 12], [27, 27, 37, 37], [48, 48, 52, 52]]
    # an objectness of exactly the threshold with a class score of 1 is kept
    assert decode([raw], {**spec, "score_threshold": 0.5}, (64, 64))[1].tolist() == [0.5]


def test_tfod_outputs_use_num_detections_and_normalised_boxes():
    boxes = np.asarray([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 1.0, 1.0], [0, 0, 1, 1]]], dtype=np.float32)
    scores = np.asarray([[0.9, 0.8, 0.95]], dtype=np.float32)
    classes = np.asarray([[3, 1, 2]], dtype=np.float32)
    spec = {"layout": "tfod", "score_threshold": 0.5}
    # num_detections = 2: the third row is padding, whatever its score
    got = decode([boxes, scores, classes, np.asarray([2.0], dtype=np.float32)], spec, (100, 200))
    assert np.allclose(got[0], [[40, 10, 80, 30], [100, 50, 200, 100]])
    assert got[1].tolist() == pytest.approx([0.9, 0.8]) and got[2].tolist() == [3, 1]
    # without num_detections every row counts
    assert decode([boxes, scores, classes], spec, (100, 200))[2].tolist() == [2, 3, 1]


def test_tfod_matching_lists_num_detections_only_when_the_model_has_it():
    three = [("detection_boxes", [1, 100, 4]), ("detection_scores", [1, 100]),
             ("detection_classes", [1, 100])]
    assert match_outputs(three, "boxes", None)["outputs"] == [n for n, _ in three]
    four = [*three, ("num_detections", [1])]
    assert match_outputs(four, "boxes", None)["outputs"] == [n for n, _ in four]


def test_layouts_count_their_classes():
    assert match_outputs([("out", [1, 25200, 85])], "yolo", None)["num_classes"] == 80
    assert match_outputs([("out", [1, 84, 8400])], "yolo", None)["num_classes"] == 80


def test_e2e_rows_are_boxes_scores_classes_best_first():
    rows = np.asarray([[[1, 2, 3, 4, 0.6, 2], [5, 6, 7, 8, 0.9, 0], [0, 0, 1, 1, 0.1, 1]]], dtype=np.float32)
    boxes, scores, classes = decode([rows], {"layout": "e2e", "score_threshold": 0.5}, (64, 64))
    assert boxes.tolist() == [[5, 6, 7, 8], [1, 2, 3, 4]] and classes.tolist() == [0, 2]
    assert scores.tolist() == pytest.approx([0.9, 0.6])


def test_nms_at_overlap_zero_keeps_the_same_box_of_two_classes_whatever_the_shift_rounds_to():
    # classes are shifted apart by more than the boxes span: by exactly the span, float32
    # rounding of the shift left these two overlapping by a hair, and overlap 0 suppressed one
    boxes = np.asarray([[-626.6563720703125, -626.6563720703125, 3924.71240234375, 3924.71240234375]] * 2,
                       dtype=np.float32)
    kept = nms(boxes, np.asarray([0.9, 0.8], dtype=np.float32), np.asarray([51, 50]), 0.0)
    assert kept.tolist() == [0, 1]


def test_a_yolo_output_with_no_room_for_a_class_is_refused():
    # [1, 3, 5]: neither 4 + classes channels nor 5 + classes columns, for any class count
    with pytest.raises(ValueError, match=r"output 'out' is \[1, 3, 5\]"):
        match_outputs([("out", [1, 3, 5])], "yolo", None)
