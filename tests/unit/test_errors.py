"""What a caller may read of an error: ours scrubbed of internals, anything else by incident."""

from __future__ import annotations

import logging

import pytest

from detserve.errors import MAX_ID_SHOWN, InvalidImage, ModelLoadError, for_caller, quoted, scrub


@pytest.mark.parametrize("text,kept,gone", [
    ("ONNX Runtime could not load the model: [ONNXRuntimeError] : 1 : FAIL : Fatal error: "
     "detserve.test:NoSuchDetector(-1) is not a registered function/op", "NoSuchDetector",
     "[ONNXRuntimeError]"),
    ("Status Message: /onnxruntime_src/core/reshape_helper.h:91 onnxruntime::ReshapeHelper::"
     "ReshapeHelper(const onnxruntime::TensorShape&, bool) The input tensor cannot be reshaped",
     "cannot be reshaped", "ReshapeHelper"),
    ("artifact abc is not in /var/lib/detserve/artifacts", "artifact abc", "/var/lib"),
    ("could not fetch artifact abc from http://10.1.2.3:8080/v1/artifacts/abc: 401", "abc",
     "10.1.2.3"),
    (r"Load model from C:\models\m.onnx failed", "Load model", "C:"),
    ("mean of 1/255 for [h, w] inputs\nsecond line", "1/255 for [h, w] inputs second line", "\n"),
])
def test_scrub_keeps_the_story_and_drops_internals(text, kept, gone):
    shown = scrub(text)
    assert kept in shown and gone not in shown


def test_scrub_is_bounded():
    assert len(scrub("x " * 5000)) <= 600


def test_ours_keep_code_status_and_fields():
    shown = for_caller(InvalidImage("bad /tmp/x", fields={"images": ["bad"]}), "the prediction")
    assert (shown.status_code, shown.code, shown.fields) == (400, "invalid_image", {"images": ["bad"]})
    assert shown.message == "bad <path>"
    assert for_caller(ModelLoadError("x"), "loading").code == "model_load_error"


def test_anything_else_is_an_incident_logged_with_its_details(caplog):
    with caplog.at_level(logging.ERROR, logger="detserve.errors"):
        shown = for_caller(KeyError("/secret/path"), "the prediction")
    assert (shown.status_code, shown.code) == (500, "internal_error")
    assert "KeyError" not in shown.message and "/secret" not in shown.message
    incident = shown.incident  # type: ignore[attr-defined]
    assert incident in shown.message and shown.message.startswith("The prediction failed")
    assert incident in caplog.text and "KeyError" in caplog.text and "/secret/path" in caplog.text


def test_a_given_incident_is_used_and_not_logged_again(caplog):
    with caplog.at_level(logging.ERROR, logger="detserve.errors"):
        shown = for_caller(RuntimeError("boom"), "the prediction", incident="task-1")
    assert "task-1" in shown.message and not caplog.text


@pytest.mark.parametrize("value,shown", [
    ("nope", "'nope'"),
    ("a" * MAX_ID_SHOWN, repr("a" * MAX_ID_SHOWN)),
    ("a" * (MAX_ID_SHOWN + 1), repr("a" * MAX_ID_SHOWN + "\u2026")),
    ("b" * 10_000, repr("b" * MAX_ID_SHOWN + "\u2026")),
    ("x\x1b[2Jy\n\u200bz", "'x?[2Jy??z'"),
    ("caf\u00e9", "'caf\u00e9'"),
    (None, "None"),
])
def test_quoted_ids_are_short_and_printable(value, shown):
    assert quoted(value) == shown
