"""The sync lane's codecs: frames and answers come back as they went, anything else is refused."""

from __future__ import annotations

import json

import pytest

from detserve.errors import ImageTooLarge, InvalidImage
from detserve.lane.frames import (
    Frame,
    decode_answer,
    decode_frame,
    encode_frame,
    failure,
    new_reply_key,
    success,
)


@pytest.mark.parametrize("image", [b"", b"\n\n{}\n", bytes(range(256)) * 100])
def test_a_frame_round_trips(image):
    frame = Frame(7, "svc\n\"x", new_reply_key(), 1_800_000_000.5, image, "req-1")
    assert decode_frame(encode_frame(frame)) == frame


@pytest.mark.parametrize("data", [b"", b"no header", b"[]\nimg", b'{"format": 1}\nimg',
                                  b'{"format": 3}\nimg', b"\xff\xfe\nimg"])
def test_what_is_not_a_frame_is_refused(data):
    with pytest.raises(ValueError):
        decode_frame(data)


def test_answers_round_trip():
    result = {"detection_classes": ["cat"], "inference_ms": 1.5}
    ok = decode_answer(success(result))
    assert (ok.status, json.loads(ok.body), ok.inference_ms, ok.error) == (200, result, 1.5, None)
    bad = decode_answer(failure(InvalidImage("not an image")))
    assert (bad.status, bad.error) == (400, {"code": "invalid_image", "message": "not an image"})
    big = decode_answer(failure(ImageTooLarge("too many pixels")))
    assert (big.status, big.error["code"]) == (413, "image_too_large")


def test_a_crash_is_the_servers_fault_and_keeps_its_details_to_itself():
    answer = decode_answer(failure(RuntimeError("/opt/secret/model.onnx: CUDA error 700")))
    assert answer.status == 503 and answer.error["code"] == "worker_error"
    assert "secret" not in answer.error["message"] and "CUDA" not in answer.error["message"]


@pytest.mark.parametrize("data", [b"", b"{}\n", b'{"status": "200"}\n', b"[1]\n"])
def test_what_is_not_an_answer_is_refused(data):
    with pytest.raises(ValueError):
        decode_answer(data)
