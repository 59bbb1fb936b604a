"""Auto stop with an hour shrunk to 2 s, through HTTP and real worker and scheduler processes."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from api_helpers import AUTH, deploy, predict, upload, wait_status
from conftest import Stack, make_settings
from detserve import tasknames as names
from detserve.service.demo import build_blob_detector
from support import blobs_image

HOUR = 2.0
SWEEP = 1.0
SLACK = 1.5  # process scheduling on a loaded 2-core machine


@pytest.fixture(scope="module")
def fast(tmp_path_factory, redis_base):
    settings = make_settings(tmp_path_factory.mktemp("autostop"), redis_base,
                             autostop_hour_seconds=HOUR, sweep_seconds=SWEEP)
    stack = Stack(settings)
    client = stack.app.test_client()
    resp = upload(client, "auto", build_blob_detector().SerializeToString())
    assert resp.status_code == 201
    yield stack
    stack.close()


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def events(client, sid):
    return client.get(f"/v1/services/{sid}/events", headers=AUTH).json["events"]


def deploy_running(client, **extra):
    created = deploy(client, "auto", 1, **extra)
    assert created.status_code == 202, created.json
    return wait_status(client, created.json["id"], "Running", timeout=30)


def test_stops_at_stop_at_with_an_auto_stop_event(fast):
    client = fast.app.test_client()
    svc = deploy_running(client, auto_stop={"enabled": True, "hours": 1})
    stop_at = ts(svc["auto_stop"]["stop_at"])
    running_at = ts(events(client, svc["id"])[-1]["at"])
    assert stop_at - running_at == pytest.approx(HOUR, abs=0.2)  # counted from Running
    stopped = wait_status(client, svc["id"], "Stopped", timeout=HOUR + 10)
    ev = events(client, svc["id"])
    assert [(e["to"], e["reason"]) for e in ev[-2:]] == [("Stopping", "auto_stop"), ("Stopped", "auto_stop")]
    assert ts(ev[-1]["at"]) - stop_at <= SWEEP + SLACK
    assert stopped["auto_stop"]["stop_at"] is None
    # billed for exactly its hour, and not a moment more
    assert stopped["running_seconds"] == pytest.approx(HOUR, abs=0.05)
    assert stopped["cost"] == pytest.approx(fast.settings.prices["cpu"], rel=0.03)


def test_stopped_service_refuses_predictions_and_cost_stops_growing(fast):
    client = fast.app.test_client()
    svc = deploy_running(client, auto_stop={"enabled": False, "hours": 1})
    assert svc["auto_stop"]["stop_at"] is None
    time.sleep(0.5)
    client.post(f"/v1/services/{svc['id']}/stop", headers=AUTH)
    first = client.get(f"/v1/services/{svc['id']}", headers=AUTH).json
    time.sleep(1.0)
    later = client.get(f"/v1/services/{svc['id']}", headers=AUTH).json
    assert first["cost"] == later["cost"] > 0
    assert first["running_seconds"] == later["running_seconds"]
    resp = predict(client, svc["id"], blobs_image([("red", 0, 0, 30, 30)]))
    assert resp.status_code == 409 and resp.json["error"]["code"] == "service_not_running"


def test_disabled_auto_stop_never_fires(fast):
    client = fast.app.test_client()
    svc = deploy_running(client, auto_stop={"enabled": False, "hours": 1})
    time.sleep(HOUR + SWEEP + SLACK)
    assert client.get(f"/v1/services/{svc['id']}", headers=AUTH).json["status"] == "Running"
    client.post(f"/v1/services/{svc['id']}/stop", headers=AUTH)


def test_stop_then_start_old_countdown_does_nothing(fast):
    client = fast.app.test_client()
    svc = deploy_running(client, auto_stop={"enabled": True, "hours": 3})
    first_stop_at = ts(svc["auto_stop"]["stop_at"])
    client.post(f"/v1/services/{svc['id']}/stop", headers=AUTH)
    time.sleep(2.5)
    client.post(f"/v1/services/{svc['id']}/start", headers=AUTH)
    second = wait_status(client, svc["id"], "Running")
    second_stop_at = ts(second["auto_stop"]["stop_at"])
    assert second_stop_at > first_stop_at + SWEEP + 1.0
    # past the first arming's time (plus a sweep) it still runs
    time.sleep(max(0.0, first_stop_at - time.time()) + SWEEP + 0.5)
    assert client.get(f"/v1/services/{svc['id']}", headers=AUTH).json["status"] == "Running"
    wait_status(client, svc["id"], "Stopped", timeout=3 * HOUR + 10)
    assert sum(e["reason"] == "auto_stop" for e in events(client, svc["id"])) == 2  # one stop


def test_patch_to_a_later_time_voids_the_earlier_countdown(fast):
    client = fast.app.test_client()
    svc = deploy_running(client, auto_stop={"enabled": True, "hours": 1})
    earlier = ts(svc["auto_stop"]["stop_at"])
    patched = client.patch(f"/v1/services/{svc['id']}", json={"auto_stop": {"enabled": True, "hours": 3}},
                           headers=AUTH)
    assert patched.status_code == 200, patched.json
    later = ts(patched.json["auto_stop"]["stop_at"])
    assert later - earlier > HOUR
    time.sleep(max(0.0, earlier - time.time()) + SWEEP + 0.5)
    assert client.get(f"/v1/services/{svc['id']}", headers=AUTH).json["status"] == "Running"
    stopped = wait_status(client, svc["id"], "Stopped", timeout=3 * HOUR + 10)
    assert ts(events(client, svc["id"])[-1]["at"]) - later <= SWEEP + SLACK
    running_at = ts(events(client, svc["id"])[1]["at"])
    assert stopped["running_seconds"] == pytest.approx(later - running_at, abs=0.1)


def test_duplicated_countdown_delivery_stops_once(fast):
    client = fast.app.test_client()
    svc = deploy_running(client, auto_stop={"enabled": True, "hours": 1})
    with fast.store.session(readonly=True) as session:
        from detserve.store import Service

        token = session.get(Service, svc["id"]).stop_token
    celery = fast.app.extensions["celery"]
    # the same countdown, delivered twice more (as a Redis visibility-timeout redelivery would)
    for _ in range(2):
        celery.send_task(names.STOP, args=[svc["id"], token], queue="scheduler",
                         eta=datetime.fromisoformat(svc["auto_stop"]["stop_at"].replace("Z", "+00:00")))
    wait_status(client, svc["id"], "Stopped", timeout=HOUR + 10)
    time.sleep(SWEEP + 1.0)
    reasons = [(e["to"], e["reason"]) for e in events(client, svc["id"])]
    assert reasons.count(("Stopped", "auto_stop")) == 1 and reasons.count(("Stopping", "auto_stop")) == 1


def test_sweep_catches_a_lost_countdown(fast):
    # given a service whose countdown is lost (the scheduler dies holding it)
    client = fast.app.test_client()
    fast.procs["scheduler"].kill()
    try:
        svc = deploy_running(client, auto_stop={"enabled": True, "hours": 1})
        stop_at = ts(svc["auto_stop"]["stop_at"])
        time.sleep(max(0.0, stop_at - time.time()) + 1.0)
        assert client.get(f"/v1/services/{svc['id']}", headers=AUTH).json["status"] == "Running"
    finally:
        # when the scheduler comes back
        fast.restart("scheduler")
    back = time.time()
    # then the service stops within one sweep period
    wait_status(client, svc["id"], "Stopped", timeout=SWEEP + 10)
    assert time.time() - back <= SWEEP + SLACK + 1.0
    assert events(client, svc["id"])[-1]["reason"] == "auto_stop"


def test_start_and_stop_are_idempotent(fast):
    client = fast.app.test_client()
    svc = deploy_running(client, auto_stop={"enabled": False, "hours": 1})
    assert client.post(f"/v1/services/{svc['id']}/start", headers=AUTH).status_code == 202
    assert client.get(f"/v1/services/{svc['id']}", headers=AUTH).json["status"] == "Running"
    assert client.post(f"/v1/services/{svc['id']}/stop", headers=AUTH).status_code == 202
    assert client.post(f"/v1/services/{svc['id']}/stop", headers=AUTH).status_code == 200
    reasons = [e["to"] for e in events(client, svc["id"])]
    assert reasons.count("Stopped") == 1 and reasons.count("Running") == 1


def test_scheduler_queue_is_separate(fast):
    assert fast.app.extensions["celery"].amqp.router.route({}, names.STOP)["queue"].name == "scheduler"


def test_a_lost_deploy_ends_failed_not_stuck(tmp_path_factory, redis_base):
    # given a stack whose deploys time out after 2 s, and a gpu service no gpu worker will take
    import redis as redis_lib

    from detserve.monitoring import heartbeats

    settings = make_settings(tmp_path_factory.mktemp("stuck"), redis_base, deploy_timeout=2.0,
                             sweep_seconds=SWEEP)
    stack = Stack(settings)
    try:
        client = stack.app.test_client()
        upload(client, "stuck", build_blob_detector().SerializeToString())
        r = redis_lib.Redis.from_url(settings.redis_url)
        heartbeats.beat(r, "gpu", "gpu@vanished")
        created = client.post("/v1/services", json={"model": "stuck", "version": 1, "flavor": "gpu"},
                              headers=AUTH)
        heartbeats.forget(r, "gpu", "gpu@vanished")
        # then the sweep fails it with a reason the user can act on
        failed = wait_status(client, created.json["id"], "Failed", timeout=2.0 + SWEEP + 10)
        assert "start it again" in failed["error"]
        assert events(client, created.json["id"])[-1]["reason"] == "deploy_timeout"
    finally:
        stack.close()
