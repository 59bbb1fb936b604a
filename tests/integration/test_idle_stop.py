"""Idle auto stop, the stopping-soon warning and Extend, with an hour shrunk to 12 s (so a
minute is 0.2 s and the ten-minute warning 2 s), through HTTP and real worker and scheduler
processes."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from api_helpers import AUTH, deploy, predict, upload, wait_status
from conftest import Stack, make_settings
from detserve.service.demo import build_blob_detector
from support import blobs_image, wait_for

HOUR = 12.0
MINUTE = HOUR / 60
SWEEP = 0.5
SLACK = 1.5  # process scheduling on a loaded 2-core machine
IMAGE = blobs_image([("red", 0, 0, 30, 30)])


@pytest.fixture(scope="module")
def fast(tmp_path_factory, redis_base):
    settings = make_settings(tmp_path_factory.mktemp("idle"), redis_base,
                             autostop_hour_seconds=HOUR, sweep_seconds=SWEEP)
    stack = Stack(settings)
    assert upload(stack.app.test_client(), "idle", build_blob_detector().SerializeToString()
                  ).status_code == 201
    yield stack
    stack.close()


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def events(client, sid):
    return [(e["to"], e["reason"], ts(e["at"]))
            for e in client.get(f"/v1/services/{sid}/events", headers=AUTH).json["events"]]


def running(client, **auto_stop):
    created = deploy(client, "idle", 1, auto_stop=auto_stop)
    assert created.status_code == 202, created.json
    return wait_status(client, created.json["id"], "Running", timeout=30)


def test_idle_stop_never_fires_while_predictions_come_then_fires_once(fast):
    # given a service that stops after 10 minutes (2 s) without a prediction, no fixed stop
    client = fast.app.test_client()
    svc = running(client, enabled=False, idle_minutes=10)
    assert svc["auto_stop"]["idle_minutes"] == 10 and svc["auto_stop"]["stop_at"] is None
    # when predictions keep coming for three idle periods, it keeps running
    until, last = time.time() + 3 * 10 * MINUTE, 0.0
    while time.time() < until:
        resp = predict(client, svc["id"], IMAGE)
        assert resp.status_code == 200, resp.json
        # ten minutes or less of idleness left: every answer warns when it would stop
        assert resp.headers["Warning"].startswith('299 - "service stops at ')
        last = time.time()
        time.sleep(0.3)
    assert client.get(f"/v1/services/{svc['id']}", headers=AUTH).json["status"] == "Running"
    # then once they stop, it stops after the idle time, once, billed to the idle deadline
    stopped = wait_status(client, svc["id"], "Stopped", timeout=10 * MINUTE + SWEEP + 10)
    ev = events(client, svc["id"])
    assert [(to, why) for to, why, _ in ev].count(("Stopped", "idle_stop")) == 1
    assert ev[-1][2] - last <= 10 * MINUTE + SWEEP + SLACK
    running_at = next(at for to, _, at in ev if to == "Running")
    assert stopped["running_seconds"] == pytest.approx(last + 10 * MINUTE - running_at, abs=0.6)
    assert ("Running", "stopping_soon") in [(to, why) for to, why, _ in ev]
    time.sleep(2 * SWEEP)
    assert [why for _, why, _ in events(client, svc["id"])].count("idle_stop") == 2  # one stop


def test_idle_stop_survives_a_scheduler_sigkill(fast):
    client = fast.app.test_client()
    fast.procs["scheduler"].kill()
    try:
        svc = running(client, enabled=False, idle_minutes=5)  # 1 s
        time.sleep(5 * MINUTE + 2 * SWEEP + 1.0)
        assert client.get(f"/v1/services/{svc['id']}", headers=AUTH).json["status"] == "Running"
    finally:
        fast.restart("scheduler")
    back = time.time()
    stopped = wait_status(client, svc["id"], "Stopped", timeout=SWEEP + 10)
    assert time.time() - back <= SWEEP + SLACK + 1.0
    ev = events(client, svc["id"])
    assert [why for to, why, _ in ev if to == "Stopped"] == ["idle_stop"]
    # billed to when it fell idle, not to when the scheduler came back
    assert stopped["running_seconds"] == pytest.approx(5 * MINUTE, abs=0.6)


def test_the_fixed_stop_warns_ten_minutes_before(fast):
    client = fast.app.test_client()
    svc = running(client, enabled=True, hours=1)  # 12 s
    stop_at = ts(svc["auto_stop"]["stop_at"])
    assert svc["stopping_soon"] is False
    assert "Warning" not in predict(client, svc["id"], IMAGE).headers
    # when ten minutes (2 s) are left, the service says so, and so does every answer
    seen = wait_for(lambda: (s := client.get(f"/v1/services/{svc['id']}", headers=AUTH).json)
                    ["stopping_soon"] and s, HOUR + 5, what="stopping_soon")
    assert time.time() >= stop_at - 10 * MINUTE - 0.2
    assert seen["auto_stop"]["stops_at"] == seen["auto_stop"]["stop_at"]
    resp = predict(client, svc["id"], IMAGE)
    if resp.status_code == 200:  # (unless it stopped in between, on a slow machine)
        assert resp.headers["Warning"] == f'299 - "service stops at {svc["auto_stop"]["stop_at"][:19]}Z"'
    wait_status(client, svc["id"], "Stopped", timeout=10 * MINUTE + 10)
    ev = [(to, why) for to, why, _ in events(client, svc["id"])]
    assert ev.count(("Running", "stopping_soon")) == 1
    assert ev.index(("Running", "stopping_soon")) < ev.index(("Stopping", "auto_stop"))


def test_extend_moves_the_stop_and_the_old_countdown_does_nothing(fast):
    client = fast.app.test_client()
    svc = running(client, enabled=True, hours=1)
    first = ts(svc["auto_stop"]["stop_at"])
    resp = client.post(f"/v1/services/{svc['id']}/extend", json={"hours": 1}, headers=AUTH)
    assert resp.status_code == 200, resp.json
    second = ts(resp.json["auto_stop"]["stop_at"])
    assert second - first == pytest.approx(HOUR, abs=0.01)
    # past the first stop time (and a sweep), it still runs
    time.sleep(max(0.0, first - time.time()) + SWEEP + 1.0)
    assert client.get(f"/v1/services/{svc['id']}", headers=AUTH).json["status"] == "Running"
    stopped = wait_status(client, svc["id"], "Stopped", timeout=HOUR + 10)
    ev = events(client, svc["id"])
    assert [why for to, why, _ in ev if to == "Stopped"] == ["auto_stop"]
    assert ev[-1][2] - second <= SWEEP + SLACK
    assert ("Running", "extended") in [(to, why) for to, why, _ in ev]
    running_at = next(at for to, _, at in ev if to == "Running")
    assert stopped["running_seconds"] == pytest.approx(second - running_at, abs=0.1)


@pytest.mark.parametrize("body", [{}, {"hours": 0}, {"hours": 25}, {"hours": 1.5}, {"hours": "2"}])
def test_extend_validates_hours(fast, body):
    client = fast.app.test_client()
    resp = client.post("/v1/services/whatever/extend", json=body, headers=AUTH)
    assert resp.status_code == 400 and "hours" in resp.json["error"]["fields"], resp.json


def test_extend_refuses_what_has_no_countdown(fast):
    client = fast.app.test_client()
    svc = running(client, enabled=False, hours=1)
    resp = client.post(f"/v1/services/{svc['id']}/extend", json={"hours": 1}, headers=AUTH)
    assert resp.status_code == 409 and resp.json["error"]["code"] == "auto_stop_disabled"
    client.post(f"/v1/services/{svc['id']}/stop", headers=AUTH)
    resp = client.post(f"/v1/services/{svc['id']}/extend", json={"hours": 1}, headers=AUTH)
    assert resp.status_code == 409 and resp.json["error"]["code"] == "service_not_running"


@pytest.mark.parametrize("idle", [0, 1441, 2.5, "30", True])
def test_idle_minutes_is_validated(fast, idle):
    resp = deploy(fast.app.test_client(), "idle", 1, auto_stop={"enabled": True, "hours": 1,
                                                                 "idle_minutes": idle})
    assert resp.status_code == 400, resp.json
    assert "auto_stop.idle_minutes" in resp.json["error"]["fields"], resp.json
