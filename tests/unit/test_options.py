"""Answer options: parsing, the round trip to the worker, box formats (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from detserve.errors import ValidationFailed
from detserve.processing.options import AnswerOptions, format_boxes, parse


def test_parse_round_trips_through_the_frame():
    options = parse({"score_threshold": "0.3", "class_thresholds": '{"cat": 0.5}',
                     "iou_threshold": "0.6", "max_detections": "7", "classes": " cat , dog ",
                     "box_format": "xywh_norm", "unrelated": "x"})
    assert options == AnswerOptions(0.3, {"cat": 0.5}, 0.6, 7, ("cat", "dog"), "xywh_norm")
    assert AnswerOptions.from_dict(options.to_dict()) == options
    assert parse({}).to_dict() == {} and parse({"score_threshold": ""}).to_dict() == {}


def test_every_bad_field_is_named_at_once():
    with pytest.raises(ValidationFailed) as caught:
        parse({"score_threshold": "2", "box_format": "cxcy", "max_detections": "0"})
    assert sorted(caught.value.fields) == ["box_format", "max_detections", "score_threshold"]
    assert "yxyx, xyxy, xywh" in caught.value.fields["box_format"][0]


def test_unknown_classes_list_the_labels():
    with pytest.raises(ValidationFailed) as caught:
        AnswerOptions(classes=("cat", "emu")).check_labels(["cat", "dog"])
    assert "['emu']" in caught.value.message and "['cat', 'dog']" in caught.value.message


def test_thresholds_and_class_ids():
    options = AnswerOptions(score_threshold=0.4, class_thresholds={"dog": 0.7}, classes=("dog",))
    assert options.thresholds(["cat", "dog"], 0.25).tolist() == pytest.approx([0.4, 0.7])
    assert AnswerOptions().thresholds(["cat"], 0.25).tolist() == pytest.approx([0.25])
    assert options.class_ids(["cat", "dog"]).tolist() == [1]
    assert AnswerOptions().class_ids(["cat"]) is None


@pytest.mark.parametrize("box_format,expected", [
    ("yxyx", [10, 20, 30, 60]), ("xyxy", [20, 10, 60, 30]), ("xywh", [20, 10, 40, 20]),
    ("yxyx_norm", [0.25, 0.2, 0.75, 0.6]), ("xyxy_norm", [0.2, 0.25, 0.6, 0.75]),
    ("xywh_norm", [0.2, 0.25, 0.4, 0.5]),
])
def test_box_formats(box_format, expected):
    yxyx = np.asarray([[10.0, 20.0, 30.0, 60.0]])  # on a 100 wide, 40 high image
    assert format_boxes(yxyx, box_format, 100, 40)[0].tolist() == pytest.approx(expected)
    assert format_boxes(np.zeros((0, 4)), box_format, 100, 40).shape == (0, 4)
