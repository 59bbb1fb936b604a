"""The scheduler's sweep finds accepted async predictions whose message vanished through the index
of waiting images (processing/headers.py), not by SCANning every key of Redis on each run."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis

from api_helpers import AUTH, deploy, upload
from detserve.processing import headers as images
from detserve.service.demo import build_blob_detector
from support import wait_for

IMAGE = b"\x89PNG never decoded: no worker takes these tasks"
TASK_SERVICE = "detserve:task:{task_id}"  # where the API keeps an accepted task's service


def _scans(client: redis.Redis) -> int:
    """SCAN commands the Redis server has run (its own count, over every database)."""
    return int(client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def _accepted(client: redis.Redis, service_id: str, seconds_ago: int) -> str:
    """What the API writes for an accepted async prediction, `seconds_ago` by both clocks; no
    message is queued and no worker claims it (as when its message vanished in transit)."""
    task_id = str(uuid.uuid4())
    key = f"detserve:image:{task_id}"
    images.keep(client, key, IMAGE, now=time.time() - seconds_ago)
    client.expire(key, images.KEEP_SECONDS - seconds_ago)
    client.set(TASK_SERVICE.format(task_id=task_id), service_id, ex=3600)
    return task_id


def test_the_sweep_reads_the_index_of_waiting_images_not_the_keyspace(stack: Any) -> None:
    client = stack.app.test_client()
    assert upload(client, "lost-tasks", build_blob_detector().SerializeToString()).status_code == 201
    created = deploy(client, "lost-tasks", 1, auto_stop={"enabled": False, "hours": 1})
    assert created.status_code == 202, created.json
    sid = created.json["id"]
    r = redis.Redis.from_url(stack.settings.redis_url)
    # given a task accepted a minute ago whose message vanished, one accepted just now, one whose
    # task ended on a worker that deleted only its image, and many unrelated keys
    lost = _accepted(r, sid, 60)
    fresh = _accepted(r, sid, 0)
    ended = _accepted(r, sid, 60)
    r.delete(f"detserve:image:{ended}")
    r.mset({f"detserve:test:other:{i}": 1 for i in range(2000)})
    scans = _scans(r)
    # when the scheduler's sweep (every second here) runs a few times
    seen: dict[str, Any] = {}

    def ended_lost() -> bool:
        seen.update(client.get(f"/v1/predictions/{lost}", headers=AUTH).json)
        return seen["status"] == "FAILURE"

    wait_for(ended_lost, 30, 0.2, what=lambda: f"the lost task to end (last: {seen})")
    time.sleep(3 * stack.settings.sweep_seconds)
    # then no SCAN ran, the lost task ended with the reason, the fresh one waits, and the ended
    # one's entry left the index
    assert _scans(r) == scans, "the sweep SCANned the keyspace"
    assert "lost in transit" in seen["error"], seen
    assert client.get(f"/v1/predictions/{fresh}", headers=AUTH).json["status"] == "PENDING"
    assert r.zscore(images.INDEX, f"detserve:image:{fresh}") is not None
    assert r.zscore(images.INDEX, f"detserve:image:{ended}") is None
    r.delete(*(f"detserve:test:other:{i}" for i in range(2000)))
    images.drop(r, f"detserve:image:{fresh}")
    client.post(f"/v1/services/{sid}/stop", headers=AUTH)
