"""Tasks a worker is running now, by task id, so that the scheduler's sweep can send again what
died with its worker (a deploy, an async prediction) instead of waiting for the broker's
visibility timeout (over a day) while the service sits in Deploying or the task in STARTED."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

KEY = "detserve:inflight"
ATTEMPTS_KEY = "detserve:inflight:attempts"


@dataclass(frozen=True)
class Record:
    task_id: str
    task: str
    args: list[Any]
    queue: str
    worker: str
    since: float


def claim(client: redis.Redis, task_id: str, task: str, args: list[Any], queue: str,
          worker: str) -> None:
    """Note that `worker` runs this task now."""
    client.hset(KEY, task_id, json.dumps({"task": task, "args": args, "queue": queue,
                                          "worker": worker, "since": time.time()}))


def release(client: redis.Redis, task_id: str) -> bool:
    """The task ended (or was taken over); True for the one caller that removed it."""
    return bool(client.hdel(KEY, task_id))


def running(client: redis.Redis) -> list[Record]:
    """Every task some worker claimed and has not released."""
    records = []
    for task_id, raw in client.hgetall(KEY).items():
        data = json.loads(raw)
        records.append(Record(task_id.decode() if isinstance(task_id, bytes) else str(task_id),
                              data["task"], list(data["args"]), data["queue"], data["worker"],
                              float(data["since"])))
    return records


def attempt(client: redis.Redis, task_id: str, keep_seconds: int) -> int:
    """Count one more delivery of the task; returns how many redeliveries it has had."""
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(ATTEMPTS_KEY, task_id, 1)
    pipe.expire(ATTEMPTS_KEY, keep_seconds)
    return int(pipe.execute()[0])
