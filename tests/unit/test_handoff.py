"""Shared-memory handoff: each image is taken once, names cannot escape, leftovers are swept."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from detserve.errors import InvalidImage
from detserve.handoff import Handoff


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
