"""Worker heartbeats in Redis: a flavor is available while one of its workers beat recently."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from typing import Any

import redis
from celery import signals

from detserve.celery_app import redis_client
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
                pass  # the broker is down or hung (calls are bounded); the next beat tries again
            self._stop.wait(self.period)


class Identity:
    """The name this worker process beats under: its Celery hostname plus a per-start token, so
    that a worker restarted under the same hostname is not taken for the one that died."""

    name: str | None = None


def connect_heartbeat(settings: Settings, role: str) -> Identity:
    """Beat as `role` (a flavor, or "scheduler") from the worker's main process once it is ready;
    the returned identity holds the name it beats under from then on."""
    heart: dict[str, Heart] = {}
    me = Identity()

    @signals.worker_ready.connect(weak=False)
    def _start(sender: Any = None, **_: Any) -> None:
        host = getattr(sender, "hostname", None) or f"{role}@{socket.gethostname()}"
        me.name = f"{host}/{uuid.uuid4().hex[:8]}"
        heart["h"] = Heart(redis_client(settings.redis_url), role, me.name,
                           settings.heartbeat_seconds)
        heart["h"].start()

    @signals.worker_shutdown.connect(weak=False)
    def _stop(**_: Any) -> None:
        if "h" in heart:
            heart["h"].stop()

    return me
