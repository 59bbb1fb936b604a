"""Lane threads take turns: one answers a sequence of frames, several answer frames that come at
once, and idle threads do not keep Redis busy."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from conftest import claim_redis_db
from detserve.lane import synclane

FLAVOR = "turns"


class Recorder:
    def __init__(self) -> None:
        self.threads: list[str] = []
        self.delay = 0.0

    def __call__(self, version_id: int, image: bytes) -> dict:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        return {"detection_boxes": [], "image": image.decode()}


@pytest.fixture
def lane(redis_base: str) -> Iterator[tuple[redis.Redis, Recorder]]:
    url = f"{redis_base}/{claim_redis_db(redis_base)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    handler = Recorder()
    consumer = synclane.LaneConsumer(url, FLAVOR, handler, threads=3)
    consumer.start()
    yield client, handler
    consumer.stop()
    consumer.join()


def _call(client: redis.Redis, image: str) -> str:
    answer = synclane.LaneClient(client, None).call(FLAVOR, 1, "svc", image.encode(), timeout=10)
    assert answer is not None and answer.status == 200
    return str(json.loads(answer.body)["image"])


def test_one_thread_answers_a_sequence_of_frames(lane):
    client, handler = lane
    for i in range(12):
        time.sleep(0.02)  # the caller does something else between its calls
        assert _call(client, f"img{i}") == f"img{i}"
    # the one that answered last takes the next (threads taking turns would switch every time);
    # a thread that had just started listening when the other took the turn back may take one
    switches = sum(a != b for a, b in zip(handler.threads[1:-1], handler.threads[2:], strict=True))
    assert switches <= 1, handler.threads


def test_frames_that_come_at_once_are_answered_side_by_side(lane):
    client, handler = lane
    handler.delay = 0.5
    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda i: _call(client, f"c{i}"), range(3))) == ["c0", "c1", "c2"]
    assert time.monotonic() - started < 1.2  # not one after the other (1.5 s)
    assert len(set(handler.threads)) == 3


def test_idle_threads_leave_redis_alone(lane, monkeypatch):
    client, handler = lane
    _call(client, "warm")
    sent: list[str] = []
    execute = redis.client.Pipeline.execute

    def counting(self, *args, **kwargs):
        sent.append(threading.current_thread().name)
        return execute(self, *args, **kwargs)

    time.sleep(1.1)  # every BRPOP in flight now started after the call
    monkeypatch.setattr(redis.client.Pipeline, "execute", counting)
    time.sleep(2.0)
    # one listener renews its BRPOP each second; the others wait without a command
    assert len(sent) <= 3 and len(set(sent)) <= 1, sent


def test_frames_through_shared_memory_leave_no_reply_to_read(redis_base: str, tmp_path):
    """The API pushes a port's frame without Redis replies: its connection never holds bytes
    to be read, and the lane still expires once its callers have given up."""
    from detserve.lane.handoff import Handoff

    url = f"{redis_base}/{claim_redis_db(redis_base)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    shm = Handoff(tmp_path / "shm")
    consumer = synclane.LaneConsumer(url, FLAVOR, Recorder(), threads=1, handoff=shm)
    consumer.start()
    lanes = synclane.LaneClient(client, shm)
    try:
        client.zadd(synclane.LOCAL_LANES.format(flavor=FLAVOR), {shm.id: time.time()})
        for i in range(5):
            answer = lanes.call(FLAVOR, 1, "svc", f"img{i}".encode(), timeout=10)
            assert answer is not None and json.loads(answer.body)["image"] == f"img{i}"
        conn = lanes._thread.conn
        conn._sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            conn._sock.recv(1)  # nothing waiting: no reply was sent
        conn._sock.setblocking(True)
        consumer.stop()
        consumer.join()
        # with no worker taking it, the frame's lane expires a minute after its caller gave up
        client.zadd(synclane.LOCAL_LANES.format(flavor=FLAVOR), {shm.id: time.time()})
        assert lanes.call(FLAVOR, 1, "svc", b"img", timeout=0.2) is None
        key = synclane.LOCAL_KEY.format(flavor=FLAVOR, shm_id=shm.id)
        assert client.llen(key) == 1 and 50 < client.ttl(key) <= 61
    finally:
        consumer.stop()
        consumer.join()
        lanes.close()
        shm.close()
