"""A broker or database outage is a 503 with Retry-After (or a 504), never a 500 and never a hang.

The API runs in this process against its own redis-server, which the tests SIGSTOP (a hung
Redis: a partition, a stalled host), kill and start again; the database is a real SQLite file
that a second connection locks.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from api_helpers import AUTH, post_multipart, upload
from conftest import as_config
from detserve.config import Settings
from detserve.service import status
from detserve.store import Store
from faultkit import Forwarder, PrivateRedis, postgres_database
from support import ADMIN, blobs_image, wait_for

IMAGE = blobs_image([("red", 40, 40, 90, 90)])
BOUND = 12.0  # generous on a loaded 2-core machine; a hang would be the prediction timeout or more


@pytest.fixture()
def outage(tmp_path: Any) -> Iterator[Any]:
    server = PrivateRedis(tmp_path)
    server.start()
    settings = Settings(data_dir=tmp_path, redis_url=server.url, admin_token=ADMIN,
                        predict_timeout=4.0, shm_dir="").resolved()
    store = Store(settings.database_url)
    store.migrate()
    from detserve_api import create_app

    app = create_app(as_config(settings), store=store)
    client = app.test_client()
    assert upload(client, "m", _model()).status_code == 201
    # a Running service, as if a worker had deployed it (no worker is needed to see outages)
    created = client.post("/v1/services", json={"model": "m", "version": 1, "flavor": "cpu"},
                          headers=AUTH)
    if created.status_code == 409:  # no CPU worker beats here: mark one alive for the check
        redis.Redis.from_url(server.url).zadd("detserve:workers:cpu", {"cpu@test": time.time() + 3600})
        created = client.post("/v1/services", json={"model": "m", "version": 1, "flavor": "cpu"},
                              headers=AUTH)
    assert created.status_code == 202, created.json
    sid = created.json["id"]
    status.transition(store, sid, status.DEPLOYING, status.RUNNING, reason="deployed")
    yield type("Outage", (), {"server": server, "client": client, "sid": sid, "store": store,
                              "settings": settings})
    server.stop()
    store.dispose()


def _model() -> bytes:
    from detserve.service.demo import build_blob_detector

    return build_blob_detector().SerializeToString()


def _calls(sid: str) -> dict[str, Callable[[FlaskClient], Any]]:
    """Every route that needs Redis, as a caller would make it."""
    image = {"images": (io.BytesIO(IMAGE), "a.png")}
    return {
        "deploy": lambda c: c.post("/v1/services", json={"model": "m", "version": 1,
                                                         "flavor": "cpu"}, headers=AUTH),
        "flavors": lambda c: c.get("/v1/flavors", headers=AUTH),
        "monitoring": lambda c: c.get(f"/v1/services/{sid}/monitoring", headers=AUTH),
        "async submit": lambda c: post_multipart(c, f"/v1/services/{sid}/predictions",
                                                 dict(image), AUTH),
        "task result": lambda c: c.get("/v1/predictions/00000000-0000-0000-0000-000000000000",
                                       headers=AUTH),
        "sync predict": lambda c: post_multipart(c, f"/v1/services/{sid}/predict",
                                                 {"images": (io.BytesIO(IMAGE), "a.png")}, AUTH),
        "metrics": lambda c: c.get("/metrics"),
        "stop": lambda c: c.post(f"/v1/services/{sid}/stop", headers=AUTH),
    }


def _judge(name: str, call: Callable[[FlaskClient], Any], client: FlaskClient) -> tuple[int, float]:
    started = time.monotonic()
    resp = call(client)
    took = time.monotonic() - started
    assert resp.status_code != 500, f"{name}: 500 {resp.get_data(as_text=True)}"
    assert took < BOUND, f"{name} took {took:.1f} s"
    if resp.status_code in (503, 504):
        body = resp.get_json()
        assert body and body["error"]["code"] in ("unavailable", "timeout", "not_ready",
                                                  "prediction_timeout"), body
        if resp.status_code == 503:
            assert int(resp.headers["Retry-After"]) > 0, name
    return resp.status_code, took


def test_a_hung_redis_gets_503_or_504_quickly_from_every_route(outage):
    # when Redis hangs (SIGSTOP: connections open, nothing answers)
    outage.server.signal(signal.SIGSTOP)
    try:
        seen = {name: _judge(name, call, outage.client) for name, call in _calls(outage.sid).items()}
    finally:
        outage.server.signal(signal.SIGCONT)
    # then every route that needs Redis says so, quickly (metrics may answer from nothing)
    failed = {name: code for name, (code, _) in seen.items() if code not in (503, 504)}
    assert set(failed) <= {"metrics"}, seen
    # and once Redis answers again, so does the API; a service whose deploy could not be sent
    # is Failed with the reason, not Deploying forever
    wait_for(lambda: outage.client.get("/v1/flavors", headers=AUTH).status_code == 200, 15)
    services = outage.client.get("/v1/services", headers=AUTH).json["services"]
    assert all(s["status"] != "Deploying" for s in services if s["id"] != outage.sid), services


def test_a_dead_then_restarted_redis_gets_503_then_service(outage):
    # when Redis is down (connection refused)
    outage.server.proc.kill()
    seen = {name: _judge(name, call, outage.client)[0]
            for name, call in _calls(outage.sid).items() if name != "stop"}
    assert {n: c for n, c in seen.items() if c not in (503, 504)}.keys() <= {"metrics"}, seen
    # then after a restart the first calls succeed again (stale pooled connections are retried)
    outage.server.start()
    redis.Redis.from_url(outage.server.url).zadd("detserve:workers:cpu",
                                                 {"cpu@test": time.time() + 3600})
    resp = outage.client.get("/v1/flavors", headers=AUTH)
    assert resp.status_code == 200, resp.json
    submitted = post_multipart(outage.client, f"/v1/services/{outage.sid}/predictions",
                               {"images": (io.BytesIO(IMAGE), "a.png")}, AUTH)
    assert submitted.status_code == 202, submitted.json


def test_a_locked_database_gets_503_not_500(outage):
    # given another process holding the database's write lock
    path = outage.settings.database_url.removeprefix("sqlite:///")
    locker = sqlite3.connect(path, timeout=1, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        resp = outage.client.post(f"/v1/services/{outage.sid}/key", headers=AUTH)
        took = time.monotonic() - started
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # then the write fails after the bounded busy wait, as a 503 the caller may retry
    assert resp.status_code == 503, resp.get_data(as_text=True)
    assert resp.json["error"]["code"] == "unavailable" and resp.headers["Retry-After"]
    assert took < 30


PG_ADMIN = os.environ.get("DETSERVE_TEST_POSTGRES_ADMIN_URL",
                          "postgresql://postgres@127.0.0.1:5432/postgres")


def test_a_postgresql_that_went_away_gets_503_on_every_route(tmp_path):
    try:
        import psycopg

        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - no PostgreSQL here
        pytest.skip(f"no PostgreSQL at {PG_ADMIN}: {exc}")
    server = PrivateRedis(tmp_path)
    server.start()
    with postgres_database(PG_ADMIN) as name:
        link = Forwarder("127.0.0.1", 5432)  # the database, as far as the API knows
        settings = Settings(data_dir=tmp_path, redis_url=server.url, admin_token=ADMIN,
                            database_url=f"postgresql+psycopg://postgres@127.0.0.1:{link.port}/{name}",
                            predict_timeout=4.0, shm_dir="").resolved()
        store = Store(settings.database_url)
        try:
            store.migrate()
            from detserve_api import create_app

            client = create_app(as_config(settings), store=store).test_client()
            assert upload(client, "m", _model()).status_code == 201
            redis.Redis.from_url(server.url).zadd("detserve:workers:cpu",
                                                  {"cpu@test": time.time() + 3600})
            sid = client.post("/v1/services", json={"model": "m", "version": 1, "flavor": "cpu"},
                              headers=AUTH).json["id"]
            status.transition(store, sid, status.DEPLOYING, status.RUNNING, reason="deployed")
            # when the database goes away (connections cut, new ones refused)
            link.close()
            calls = {**_calls(sid), "list": lambda c: c.get("/v1/services", headers=AUTH),
                     "get": lambda c: c.get(f"/v1/services/{sid}", headers=AUTH)}
            seen = {n: _judge(n, call, client)[0] for n, call in calls.items() if n != "metrics"}
            # then every route that needs it says 503, as JSON (the sync route's fast path too);
            # flavors and an unknown task's result need only Redis
            assert {n for n, c in seen.items() if c != 503} <= {"flavors", "task result"}, seen
            assert seen["sync predict"] == 503 and seen["get"] == 503, seen
        finally:
            link.close()
            store.dispose()
            server.stop()
