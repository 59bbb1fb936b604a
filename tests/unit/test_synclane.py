"""Sync-lane frames survive any image bytes, and shared-memory handoff is safe to misuse."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from detserve import synclane
from detserve.errors import InvalidImage
from detserve.handoff import Handoff


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


def test_handoff_put_take_once(tmp_path: Path):
    shm = Handoff(tmp_path)
    name = shm.put(b"\xff\xd8\xff" * 1000)
    assert shm.take(name) == b"\xff\xd8\xff" * 1000
    with pytest.raises(InvalidImage, match="gone"):
        shm.take(name)
    assert list(tmp_path.glob("*.img")) == []


def test_processes_sharing_a_directory_share_its_id(tmp_path: Path):
    assert Handoff(tmp_path).id == Handoff(tmp_path).id != Handoff(tmp_path / "other").id


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", ".detserve-shm-id", "x.txt"])
def test_names_outside_the_directory_are_refused(tmp_path: Path, name: str):
    shm = Handoff(tmp_path / "shm")
    with pytest.raises(InvalidImage):
        shm.take(name)
    shm.discard(name)  # and discarding one does nothing
    assert (shm.dir / ".detserve-shm-id").exists()


def test_sweep_removes_only_old_leftovers(tmp_path: Path):
    shm = Handoff(tmp_path)
    old, new = shm.put(b"old"), shm.put(b"new")
    past = time.time() - 3600
    os.utime(tmp_path / old, (past, past))
    assert shm.sweep(older_than=600) == 1
    assert shm.take(new) == b"new"
