"""Sync-lane frames and answers survive any bytes; anything else is refused."""

from __future__ import annotations

import json

import pytest

from detserve.errors import ImageTooLarge
from detserve.lane import replies, synclane


@pytest.mark.parametrize("image", [b"", b"\n\n{}\n", bytes(range(256)) * 1000])
def test_frames_round_trip_whatever_the_image_holds(image):
    frame = synclane.Frame(7, "svc", "detserve:reply:x", 123.5, image)
    assert synclane.decode(synclane.encode(frame)) == frame


def test_a_frame_can_name_its_port_instead():
    frame = synclane.Frame(7, "svc", "r", 1.0, port="abc", image_size=12345)
    assert synclane.decode(synclane.encode(frame)) == frame


@pytest.mark.parametrize("data", [b"no newline", b'{"format": 99}\nxx', b"[1]\n", b'{"format": 2}\n',
                                  b'{"format": 1, "version_id": 1, "service_id": "s", '
                                  b'"reply_to": "r", "deadline": 1}\nxx'])
def test_anything_else_is_refused(data):
    with pytest.raises((ValueError, KeyError)):
        synclane.decode(data)


def test_answers_carry_the_result_bytes_or_the_error():
    result = {"detection_boxes": [[1, 2, 3, 4]], "detection_classes": ["a\nb"], "inference_ms": 3.5}
    ok = replies.decode(replies.success(result))
    assert (ok.status, ok.inference_ms, ok.error) == (200, 3.5, None)
    assert json.loads(ok.body) == result
    failed = replies.decode(replies.encode(replies.failure(ImageTooLarge("too big"))))
    assert (failed.status, failed.body) == (413, b"")
    assert failed.error == {"code": "image_too_large", "message": "too big"}
    crashed = replies.failure(RuntimeError("boom"))
    assert crashed["status"] == 500 and crashed["error"]["code"] == "internal_error"
    with pytest.raises(ValueError):
        replies.decode(b'{"no": "status"}\n')
