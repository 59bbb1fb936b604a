"""Auto stop with an hour shrunk to 2 s, through HTTP and real worker and scheduler processes."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta

import pytest
import redis

from api_helpers import AUTH, deploy, get_service, predict, upload, wait_status
from conftest import Stack, make_settings
from detserve import tasknames as names
from detserve.monitoring import heartbeats, inflight
from detserve.service import status
from detserve.service.demo import build_blob_detector
from detserve.store import Service, utcnow
from support import blobs_image, heartbeat, wait_for

HOUR = 2.0
SWEEP = 1.0
LATE = 10.0  # a bound on lateness, not a timing: a loaded 2-core machine delays processes by seconds


@pytest.fixture(scope="module")
def fast(tmp_path_factory, redis_base):
    # heartbeats 4 s apart: the sweep's "silent for three beats" is then 12 s, which no other
    # count of beats or seconds equals (test_the_sweep_resends_a_task_once_its_worker_is_silent)
    settings = make_settings(tmp_path_factory.mktemp("autostop"), redis_base,
                             autostop_hour_seconds=HOUR, sweep_seconds=SWEEP, heartbeat_seconds=4.0)
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
    assert stop_at - running_at == pytest.approx(HOUR, abs=0.5)  # counted from Running, not from the deploy
    stopped = wait_status(client, svc["id"], "Stopped", timeout=HOUR + 10)
    ev = events(client, svc["id"])
    assert [(e["to"], e["reason"]) for e in ev[-2:]] == [("Stopping", "auto_stop"), ("Stopped", "auto_stop")]
    assert 0 <= ts(ev[-1]["at"]) - stop_at <= LATE
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
    time.sleep(HOUR + 2 * SWEEP)  # past its hour and two sweeps
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
    assert 0 <= ts(events(client, svc["id"])[-1]["at"]) - later <= LATE
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
    # given a service whose countdown is lost: sent while the scheduler is down, then flushed
    # from its queue (with the countdown still queued, the restarted scheduler would run it and
    # the sweep would never be needed)
    client = fast.app.test_client()
    fast.procs["scheduler"].kill()
    try:
        svc = deploy_running(client, auto_stop={"enabled": True, "hours": 1})
        broker = redis.Redis.from_url(fast.settings.redis_url)
        queued = [k for k in broker.scan_iter(match="scheduler*") if broker.type(k) == b"list"]
        assert queued and broker.delete(*queued) >= 1  # the countdown was there, and is gone
        stop_at = ts(svc["auto_stop"]["stop_at"])
        time.sleep(max(0.0, stop_at - time.time()) + 1.0)
        assert client.get(f"/v1/services/{svc['id']}", headers=AUTH).json["status"] == "Running"
    finally:
        # when the scheduler comes back
        fast.restart("scheduler")
    # then the sweep stops it, once the scheduler is back (a bound, not a timing), and says so
    wait_status(client, svc["id"], "Stopped", timeout=SWEEP + LATE)
    last = events(client, svc["id"])[-1]
    assert last["reason"] == "auto_stop" and ts(last["at"]) > stop_at + 1.0  # seen Running then
    wait_for(lambda: f"sweep auto stopped {svc['id']}" in fast.procs["scheduler"].tail(20000), 10,
             what="the scheduler's log line naming the service the sweep stopped")


def test_the_sweep_resends_a_task_once_its_worker_is_silent_for_three_beats(fast):
    # given two claimed tasks whose workers last beat 3.5 and 2.5 beats ago (kept at those ages)
    hb = fast.settings.heartbeat_seconds
    client = redis.Redis.from_url(fast.settings.redis_url)
    ages = {"worker@silent": 3.5 * hb, "worker@late": 2.5 * hb}
    done = threading.Event()

    def beat_at_those_ages() -> None:
        while not done.is_set():
            for worker, age in ages.items():
                heartbeats.beat(client, "nobody", worker, now=time.time() - age)
            done.wait(0.1)

    beating = threading.Thread(target=beat_at_those_ages, daemon=True)
    beating.start()
    try:
        for worker in ages:  # deploys on a queue no worker reads: sent again, they wait there
            inflight.claim(client, f"task-{worker}", names.DEPLOY, ["no-such-service", "nobody"],
                           "nobody", worker)

        def claimed() -> set[str]:
            return {r.task_id for r in inflight.running(client)}

        # then the silent one's task is sent again within a few sweeps, and the scheduler says so
        wait_for(lambda: "task-worker@silent" not in claimed(), SWEEP + LATE,
                 what="the silent worker's task to be sent again")
        wait_for(lambda: "sent again: task-worker@silent" in fast.procs["scheduler"].tail(20000), 10,
                 what="the scheduler's log line naming the task it sent again")
        # and the late one's is still its own, sweeps later (which store no results: a key per
        # sweep, every second, would be waste)
        results = stored_results(client)
        time.sleep(3 * SWEEP)
        assert "task-worker@late" in claimed()
        assert stored_results(client) == results
    finally:
        done.set()
        beating.join()
        for worker in ages:
            heartbeats.forget(client, "nobody", worker)
            inflight.release(client, f"task-{worker}")


def test_the_sweep_finishes_half_done_stops_and_fails_stuck_deploys_and_says_so(fast):
    # given a stop left half done and a deploy nobody finishes, both from an hour ago
    client = fast.app.test_client()
    half_stopped = deploy_running(client, auto_stop={"enabled": False, "hours": 1})["id"]
    stuck = deploy_running(client, auto_stop={"enabled": False, "hours": 1})["id"]
    status.transition(fast.store, half_stopped, status.RUNNING, status.STOPPING, reason="user")
    status.transition(fast.store, stuck, status.RUNNING, status.DEPLOYING, reason="restart")
    with fast.store.session() as session:
        for sid in (half_stopped, stuck):
            session.get(Service, sid).updated_at = utcnow() - timedelta(hours=1)
    # then the sweep repairs both, and its log names them
    wait_status(client, half_stopped, "Stopped", timeout=SWEEP + LATE)
    wait_status(client, stuck, "Failed", timeout=SWEEP + LATE)
    lines = (f"stops left half done, now Stopped: {half_stopped}",
             f"deploys that never finished, now Failed: {stuck}")
    wait_for(lambda: all(line in fast.procs["scheduler"].tail(20000) for line in lines), 10,
             what=f"the scheduler's log lines {lines}")


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
    settings = make_settings(tmp_path_factory.mktemp("stuck"), redis_base, deploy_timeout=2.0,
                             sweep_seconds=SWEEP)
    stack = Stack(settings)
    try:
        client = stack.app.test_client()
        upload(client, "stuck", build_blob_detector().SerializeToString())
        with heartbeat(settings, "gpu", "gpu@vanished"):
            created = client.post("/v1/services", json={"model": "stuck", "version": 1, "flavor": "gpu"},
                                  headers=AUTH)
        # then the sweep fails it with a reason the user can act on
        failed = wait_status(client, created.json["id"], "Failed", timeout=2.0 + SWEEP + 10)
        assert "start it again" in failed["error"]
        assert events(client, created.json["id"])[-1]["reason"] == "deploy_timeout"
    finally:
        stack.close()


def stored_results(client: redis.Redis) -> int:
    """How many task results the backend holds that say SUCCESS with nothing in them."""
    metas = [json.loads(v) for v in map(client.get, client.scan_iter(match="celery-task-meta-*")) if v]
    return sum(1 for m in metas if m["status"] == "SUCCESS" and m["result"] is None)


def stop_token(stack, sid):
    from detserve.store import Service

    with stack.store.session(readonly=True) as session:
        return session.get(Service, sid).stop_token


def scheduler_ran_stop_tasks(stack) -> int:
    """How many scheduler.stop tasks the running scheduler has executed (revoked ones are
    discarded before they count)."""
    replies = stack.app.extensions["celery"].control.inspect(timeout=2.0).stats() or {}
    return sum(r.get("total", {}).get(names.STOP, 0) for n, r in replies.items()
               if n.startswith("scheduler@"))


def revoked_by_scheduler(stack) -> set[str]:
    replies = stack.app.extensions["celery"].control.inspect(timeout=2.0).revoked() or {}
    return {t for n, ids in replies.items() if n.startswith("scheduler@") for t in ids}


def rearm(client, sid, how):
    """Void the current arming the way a user does: stop then start, or change the hours."""
    if how == "stop-start":
        assert client.post(f"/v1/services/{sid}/stop", headers=AUTH).status_code == 202
        assert client.post(f"/v1/services/{sid}/start", headers=AUTH).status_code == 202
        return wait_status(client, sid, "Running", timeout=60)
    patched = client.patch(f"/v1/services/{sid}", json={"auto_stop": {"enabled": True, "hours": 12}},
                           headers=AUTH)
    assert patched.status_code == 200, patched.json
    return patched.json


@pytest.mark.parametrize("how", ["stop-start", "patch"])
def test_old_countdown_voided_by_its_token_after_a_scheduler_restart(fast, how):
    # given a service re-armed by the user, and a scheduler that restarted since: its in-memory
    # list of revoked countdowns is gone, so only the arming token can void the old one
    client = fast.app.test_client()
    svc = deploy_running(client, auto_stop={"enabled": True, "hours": 10})
    old = stop_token(fast, svc["id"])
    rearmed = rearm(client, svc["id"], how)
    assert stop_token(fast, svc["id"]) not in (None, old)
    fast.procs["scheduler"].stop()
    fast.restart("scheduler")
    # when the old countdown is delivered again (tasks are acknowledged late: a redelivery)
    fast.app.extensions["celery"].send_task(names.STOP, args=[svc["id"], old], task_id=old,
                                            queue="scheduler")
    wait_for(lambda: scheduler_ran_stop_tasks(fast) >= 1, 60, 0.5, what="the redelivered countdown to run")
    # (a countdown's run stores no result, one key per arming in the backend: at most the
    # REVOKED mark of its revoke is there)
    meta = redis.Redis.from_url(fast.settings.redis_url).get(f"celery-task-meta-{old}")
    assert meta is None or json.loads(meta)["status"] == "REVOKED", meta
    # then the service runs on, on its new arming
    now = get_service(client, svc["id"])
    assert now["status"] == "Running" and now["auto_stop"]["stop_at"] == rearmed["auto_stop"]["stop_at"]
    assert "auto_stop" not in [e["reason"] for e in events(client, svc["id"])]
    assert f"auto stopped service {svc['id']}" not in fast.procs["scheduler"].tail(20000)
    # and the countdown of the current arming, delivered now, stops it before its stop_at: the
    # countdown task did it, not the sweep (which waits for stop_at)
    latest = client.patch(f"/v1/services/{svc['id']}", json={"auto_stop": {"enabled": True, "hours": 24}},
                          headers=AUTH).json
    fast.app.extensions["celery"].send_task(names.STOP, args=[svc["id"], stop_token(fast, svc["id"])],
                                            queue="scheduler")
    wait_status(client, svc["id"], "Stopped", timeout=30)
    last = events(client, svc["id"])[-1]
    assert last["reason"] == "auto_stop" and ts(last["at"]) < ts(latest["auto_stop"]["stop_at"])
    wait_for(lambda: f"auto stopped service {svc['id']}" in fast.procs["scheduler"].tail(20000), 10,
             what="the scheduler's log line naming the service its countdown stopped")


@pytest.mark.parametrize("how", ["stop-start", "patch", "stop"])
def test_voiding_an_arming_revokes_its_countdown(fast, how):
    # given a Running service with its countdown held by the scheduler
    client = fast.app.test_client()
    svc = deploy_running(client, auto_stop={"enabled": True, "hours": 10})
    old = stop_token(fast, svc["id"])
    # when the user stops it, or re-arms it
    if how == "stop":
        assert client.post(f"/v1/services/{svc['id']}/stop", headers=AUTH).status_code == 202
    else:
        rearm(client, svc["id"], how)
    # then the scheduler is told to drop the old countdown, not left to run it for nothing
    wait_for(lambda: old in revoked_by_scheduler(fast), 30, 0.5, what="the old countdown to be revoked")
    client.post(f"/v1/services/{svc['id']}/stop", headers=AUTH)
