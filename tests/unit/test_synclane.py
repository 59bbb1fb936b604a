"""Sync-lane frames survive any image bytes; anything else is refused."""

from __future__ import annotations

import pytest

from detserve import synclane


@pytest.mark.parametrize("image", [b"", b"\n\n{}\n", bytes(range(256)) * 1000])
def test_frames_round_trip_whatever_the_image_holds(image):
    frame = synclane.Frame(7, "svc", "detserve:reply:x", 123.5, image)
    assert synclane.decode(synclane.encode(frame)) == frame


def test_a_frame_can_name_its_image_instead():
    frame = synclane.Frame(7, "svc", "r", 1.0, image_name="abc.img")
    assert synclane.decode(synclane.encode(frame)) == frame


@pytest.mark.parametrize("data", [b"no newline", b'{"format": 99}\nxx', b"[1]\n", b'{"format": 1}\n'])
def test_anything_else_is_refused(data):
    with pytest.raises((ValueError, KeyError)):
        synclane.decode(data)
