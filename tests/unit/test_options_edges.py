"""Edges of the answer options' parsing that `make mutate` found untested: the bounds of each range,
what each wrong kind of value is told, and how much of a long bad value a message quotes."""

from __future__ import annotations

import pytest

from detserve.errors import ValidationFailed
from detserve.processing.options import parse


def refusal(field: str, raw: str) -> str:
    with pytest.raises(ValidationFailed) as caught:
        parse({field: raw})
    assert list(caught.value.fields) == [field]
    return caught.value.fields[field][0]


@pytest.mark.parametrize("field,raw,value", [
    ("max_detections", "1", 1), ("max_detections", "1000", 1000),
    ("score_threshold", "0", 0.0), ("score_threshold", "1", 1.0),
    ("class_thresholds", '{"cat": 0}', {"cat": 0.0}), ("class_thresholds", '{"cat": 1}', {"cat": 1.0}),
    ("classes", '["cat", "dog"]', ("cat", "dog")),
])
def test_the_ends_of_each_range_are_accepted(field, raw, value):
    assert getattr(parse({field: raw}), field) == value


@pytest.mark.parametrize("field,raw,told", [
    ("max_detections", "1001", "from 1 to 1000"), ("max_detections", "0", "from 1 to 1000"),
    ("score_threshold", "-0.5", "from 0 to 1"),
    ("score_threshold", "abc", "'abc' is not a number from 0 to 1"),
    ("class_thresholds", '{"cat": 1.5}', "'cat': 1.5 is not a number from 0 to 1"),
    ("class_thresholds", '{"cat": -1}', "is not a number from 0 to 1"),
    ("class_thresholds", '{"cat": "high"}', "'cat': 'high' is not a number"),
    ("class_thresholds", '{"cat": 0.5', "is not a JSON object of class name to a number"),
    ("class_thresholds", "[1]", "is not a JSON object of class name to a number"),
    ("class_thresholds", "{}", "is not a JSON object of class name to a number"),
    ("classes", '["cat", 7]', "is not class names as a comma-separated list or a JSON list"),
    ("classes", '["cat"', "is not class names as a comma-separated list or a JSON list"),
    ("classes", "cat,,dog", "(no empty names)"),
])
def test_each_wrong_value_is_told_what_is_accepted(field, raw, told):
    assert told in refusal(field, raw)


@pytest.mark.parametrize("field,raw,quoted", [
    ("class_thresholds", "x" * 200, 80), ("classes", "[" + "x" * 200, 80),
    ("classes", "x," * 100, 80), ("box_format", "x" * 200, 40),
])
def test_a_long_bad_value_is_quoted_only_in_part(field, raw, quoted):
    message = refusal(field, raw)
    assert repr(raw[:quoted]) in message
