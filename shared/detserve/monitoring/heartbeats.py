"""Worker heartbeats in Redis: a flavor is available while one of its workers beat recently."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import redis
from celery import signals

from detserve.config import Settings

KEY = "detserve:workers:{flavor}"


def beat(client: redis.Redis, flavor: str, worker: str, now: float | None = None) -> None:
    client.zadd(KEY.format(flavor=flavor), {worker: now if now is not None else time.time()})


def forget(client: redis.Redis, flavor: str, worker: str) -> None:
    client.zrem(KEY.format(flavor=flavor), worker)


def alive(client: redis.Redis, flavor: str, within: float, now: float | None = None) -> list[str]:
    """Workers of a flavor that beat in the last `within` seconds."""
    since = (now if now is not None else time.time()) - within
    members = client.zrangebyscore(KEY.format(flavor=flavor), since, "+inf")
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


class Heart:
    """A daemon thread that beats every `period` seconds until stopped."""

    def __init__(self, client: redis.Redis, flavor: str, worker: str, period: float) -> None:
        self.client, self.flavor, self.worker, self.period = client, flavor, worker, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="detserve-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            forget(self.client, self.flavor, self.worker)
        except redis.RedisError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                beat(self.client, self.flavor, self.worker)
            except redis.RedisError:
                pass  # the broker is down; the next beat tries again
            self._stop.wait(self.period)


def connect_heartbeat(settings: Settings, role: str) -> None:
    """Beat as `role` (a flavor, or "scheduler") from the worker's main process once it is ready."""
    heart: dict[str, Heart] = {}

    @signals.worker_ready.connect(weak=False)
    def _start(sender: Any = None, **_: Any) -> None:
        name = getattr(sender, "hostname", None) or f"{role}@{socket.gethostname()}"
        heart["h"] = Heart(redis.Redis.from_url(settings.redis_url), role, name,
                           settings.heartbeat_seconds)
        heart["h"].start()

    @signals.worker_shutdown.connect(weak=False)
    def _stop(**_: Any) -> None:
        if "h" in heart:
            heart["h"].stop()
