"""Shared-memory handoff: a thread's port carries its images and answers, late answers are not
mistaken for the current one, names cannot escape, and what dead processes left is swept."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from detserve.errors import InvalidImage
from detserve.lane import handoff
from detserve.lane.handoff import DATAGRAM_BYTES, Handoff


@pytest.fixture
def shm(tmp_path: Path) -> Iterator[Handoff]:
    handoff = Handoff(tmp_path / "shm")  # short enough for a Unix socket name
    yield handoff
    handoff.close()


def test_a_port_hands_over_its_image_and_gets_its_answer(shm: Handoff):
    port = shm.open_port()
    big, small = b"\xff\xd8\xff" * 100_000, b"\x89PNG" * 10
    assert port.write(big) == len(big)
    assert shm.read_image(port.name, len(big)) == big
    assert port.write(small) == len(small)  # the slot is reused: the frame says how much is image
    assert shm.read_image(port.name, len(small)) == small
    with pytest.raises(InvalidImage, match="shorter"):
        shm.read_image(port.name, len(big) * 2)
    # an answer to a call that gave up earlier is thrown away, the current one is returned
    assert shm.send_answer(port.name, "old", b"late")
    assert shm.send_answer(port.name, "now", b"answer\nwith newline")
    assert port.receive("now", timeout=5) == b"answer\nwith newline"
    assert port.receive("now", timeout=0.05) is None
    port.close()
    assert sorted(p.name for p in shm.dir.iterdir()) == [".detserve-shm-id"]


def test_an_answer_too_big_for_a_datagram_goes_as_a_file(shm: Handoff):
    port = shm.open_port()
    huge = os.urandom(DATAGRAM_BYTES * 3)
    assert shm.send_answer(port.name, "a", huge)
    assert port.receive("a", timeout=5) == huge
    shm.send_answer(port.name, "late", huge)  # and a late one's file does not stay behind
    assert port.receive("b", timeout=0.05) is None
    assert list(shm.dir.glob("*.img")) == []
    port.close()


def test_answering_a_closed_port_says_nobody_waits(shm: Handoff):
    port = shm.open_port()
    port.close()
    assert shm.send_answer(port.name, "a", b"x") is False
    assert shm.send_answer(port.name, "a", os.urandom(DATAGRAM_BYTES + 1)) is False
    assert list(shm.dir.glob("*.img")) == []
    with pytest.raises(InvalidImage, match="gone"):
        shm.read_image(port.name, 1)


def test_a_kept_slot_descriptor_never_outlives_its_port(shm: Handoff):
    """The worker keeps slot descriptors open: a port that closed is still gone to it, a new
    port is read afresh, and the sweep lets go of descriptors of closed ports."""
    ports = [shm.open_port() for _ in range(3)]
    for i, port in enumerate(ports):
        port.write(b"image %d" % i)
        assert shm.read_image(port.name, 7) == b"image %d" % i
    ports[0].close()
    with pytest.raises(InvalidImage, match="gone"):
        shm.read_image(ports[0].name, 7)
    ports[1].write(b"rewritten")  # a slot is rewritten in place: the kept descriptor sees it
    assert shm.read_image(ports[1].name, 9) == b"rewritten"
    ports[2].close()
    shm.sweep(older_than=600)
    assert ports[2].name not in shm._slots and ports[1].name in shm._slots
    ports[1].close()


def test_slot_descriptors_kept_are_bounded(shm: Handoff, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(handoff, "SLOT_FDS", 2)
    ports = [shm.open_port() for _ in range(4)]
    for port in ports + ports[:1]:
        port.write(b"abc")
        assert shm.read_image(port.name, 3) == b"abc"
    assert list(shm._slots) == [ports[3].name, ports[0].name]  # the most recently used
    for port in ports:
        port.close()


def test_one_off_files_are_taken_once(shm: Handoff):
    name = shm.put(b"\xff\xd8\xff" * 1000)
    assert shm.take(name) == b"\xff\xd8\xff" * 1000
    with pytest.raises(InvalidImage, match="gone"):
        shm.take(name)


def test_processes_sharing_a_directory_share_its_id(tmp_path: Path):
    assert Handoff(tmp_path).id == Handoff(tmp_path).id != Handoff(tmp_path / "other").id


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", ".detserve-shm-id", "x.txt"])
def test_names_outside_the_directory_are_refused(shm: Handoff, name: str):
    with pytest.raises(InvalidImage):
        shm.take(name)
    with pytest.raises(InvalidImage):
        shm.read_image(name.removesuffix(".txt"), 1)
    shm.discard(name)  # and discarding one does nothing
    assert (shm.dir / ".detserve-shm-id").exists()


def test_sweep_removes_what_dead_processes_left_and_nothing_alive(shm: Handoff):
    # given a port whose process died without closing it, a live port, an old and a new file
    code = ("import sys; from detserve.lane.handoff import Handoff; "
            "print(Handoff(sys.argv[1]).open_port().name)")
    dead = subprocess.run([sys.executable, "-c", code, str(shm.dir)], check=True,
                          capture_output=True, text=True).stdout.strip()
    live = shm.open_port()
    old, new = shm.put(b"old"), shm.put(b"new")
    past = time.time() - 3600
    for path in shm.dir.iterdir():
        if path.name != new:
            os.utime(path, (past, past))
    # when the sweep runs, then only the dead port and the old file go
    assert shm.sweep(older_than=600) == 2
    names = {p.name for p in shm.dir.iterdir()}
    assert not any(n.startswith(dead) for n in names) and old not in names
    assert {live.name + ".slot", live.name + ".sock", new} <= names
    live.write(b"still mine")
    assert shm.read_image(live.name, 10) == b"still mine"
    live.close()
