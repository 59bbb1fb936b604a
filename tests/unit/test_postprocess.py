"""Decoders' layout matching, NMS and rescaling (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from detserve.processing.postprocess import match_outputs, nms, to_image
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
