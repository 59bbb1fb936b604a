"""The service layer's deploy, stop and auto-stop decisions on a real SQLite store and a real
Celery bus over Redis (no worker takes the messages: the test reads what was sent).

Fast enough to be the test command of `make mutate` for deployments.py; the same behaviour is
tested end to end, with real workers and a real scheduler, in tests/integration/test_auto_stop.py.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError

from conftest import make_settings
from detserve.celery_app import make_celery
from detserve.errors import NotFound
from detserve.lane.bus import CeleryBus
from detserve.service import deployments, repairs, status
from detserve.service.artifacts import ArtifactStore
from detserve.service.demo import build_blob_detector
from detserve.service.versions import register_version
from detserve.store import Service, ServiceEvent, Store, utcnow

HOUR = 10.0  # seconds in an auto-stop hour here


class RecordingBus(CeleryBus):
    """The real bus, which also remembers what it sent (for the assertions)."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.sent: list[tuple[str, ...]] = []

    def deploy(self, service_id: str, flavor: str) -> None:
        self.sent.append(("deploy", service_id, flavor))
        super().deploy(service_id, flavor)

    def countdown(self, service_id: str, token: str, eta: datetime) -> None:
        self.sent.append(("countdown", service_id, token, eta.isoformat()))
        super().countdown(service_id, token, eta)

    def revoke(self, token: str) -> None:
        self.sent.append(("revoke", token))
        super().revoke(token)

    def unload(self, version_id: int) -> None:
        self.sent.append(("unload", str(version_id)))
        super().unload(version_id)

    def take(self) -> list[tuple[str, ...]]:
        sent, self.sent = self.sent, []
        return sent


@pytest.fixture(scope="module")
def celery_app(tmp_path_factory, redis_base):
    return make_celery(make_settings(tmp_path_factory.mktemp("deployments"), redis_base))


@pytest.fixture()
def rt(tmp_path, celery_app):
    store = Store(f"sqlite:///{tmp_path / 'detserve.db'}")  # a fresh database for each test
    store.migrate()
    runtime = deployments.Runtime(store, ArtifactStore(tmp_path / "artifacts"), RecordingBus(celery_app),
                                  HOUR)
    yield runtime
    store.dispose()


def new_service(rt, enabled: bool = True, hours: int = 1) -> str:
    rt.bus.take()
    version = register_version(rt, "m", build_blob_detector().SerializeToString(), None,
                               status.SUCCESSFUL, max_bytes=1 << 30)
    service, key = deployments.create_service(rt, version, "cpu", None, {"enabled": enabled, "hours": hours})
    assert rt.bus.take() == [("deploy", service.id, "cpu")] and key
    return service.id


def running(rt, **kwargs: Any) -> Service:
    sid = new_service(rt, **kwargs)
    loaded = []
    assert deployments.complete_deploy(rt, sid, loaded.append) == status.RUNNING
    assert [v.id for v in loaded] == [deployments.get_service(rt, sid).version_id]
    return deployments.get_service(rt, sid)


def reasons(rt, sid: str) -> list[tuple[str | None, str]]:
    return [(e.to_status, e.reason) for e in deployments.events(rt, sid)]


def test_deploy_arms_the_countdown_from_running(rt):
    before = utcnow()
    svc = running(rt, hours=2)
    assert svc.stop_token and before + timedelta(seconds=2 * HOUR) <= svc.stop_at
    assert svc.stop_at <= utcnow() + timedelta(seconds=2 * HOUR)
    assert rt.bus.take() == [("countdown", svc.id, svc.stop_token, svc.stop_at.isoformat())]
    assert reasons(rt, svc.id) == [("Deploying", "created"), ("Running", "deployed")]


def test_disabled_auto_stop_sends_no_countdown(rt):
    svc = running(rt, enabled=False)
    assert (svc.stop_at, svc.stop_token) == (None, None) and rt.bus.take() == []


def test_a_failed_load_leaves_the_service_failed_with_the_reason(rt):
    sid = new_service(rt)

    def broken(_version):
        raise RuntimeError("no such operator")

    assert deployments.complete_deploy(rt, sid, broken) == status.FAILED
    svc = deployments.get_service(rt, sid)
    # the reason a caller may read (issue 12): a stable message and an incident id; the
    # exception's type and text stay in the log
    assert svc.status == status.FAILED and svc.error.startswith("Loading the model failed")
    assert "incident" in svc.error and "RuntimeError" not in svc.error
    assert rt.bus.take() == []


def test_a_stop_during_the_load_wins(rt):
    sid = new_service(rt)

    def load_while_stopped(_version):
        assert deployments.stop(rt, sid)

    assert deployments.complete_deploy(rt, sid, load_while_stopped) == status.STOPPED
    assert deployments.get_service(rt, sid).status == status.STOPPED
    assert [m[0] for m in rt.bus.take()] == ["unload"]  # no countdown for a stopped service


def test_the_current_token_stops_and_bills_until_stop_at(rt):
    svc = running(rt)
    rt.bus.take()
    assert deployments.auto_stop(rt, svc.id, svc.stop_token)
    stopped = deployments.get_service(rt, svc.id)
    assert stopped.status == status.STOPPED and (stopped.stop_at, stopped.stop_token) == (None, None)
    assert reasons(rt, svc.id)[-2:] == [("Stopping", "auto_stop"), ("Stopped", "auto_stop")]
    assert stopped.running_seconds < 5.0  # billed until now, well before its stop_at
    assert ("revoke", svc.stop_token) in rt.bus.take()


@pytest.mark.parametrize("token", ["", "0" * 32, None])
def test_any_other_token_does_nothing(rt, token):
    svc = running(rt)
    assert not deployments.auto_stop(rt, svc.id, token if token is not None else svc.stop_token[::-1])
    assert deployments.get_service(rt, svc.id).status == status.RUNNING


def test_the_token_of_an_earlier_arming_does_nothing(rt):
    svc = running(rt)
    assert deployments.stop(rt, svc.id)
    deployments.start(rt, svc.id)
    assert deployments.complete_deploy(rt, svc.id, lambda v: None) == status.RUNNING
    again = deployments.get_service(rt, svc.id)
    assert again.stop_token not in (None, svc.stop_token)
    assert not deployments.auto_stop(rt, svc.id, svc.stop_token)
    assert deployments.get_service(rt, svc.id).status == status.RUNNING


def test_stop_revokes_the_countdown_and_unloads_an_unused_version(rt):
    svc = running(rt)
    rt.bus.take()
    assert deployments.stop(rt, svc.id)
    assert rt.bus.take() == [("revoke", svc.stop_token), ("unload", str(svc.version_id))]
    assert not deployments.stop(rt, svc.id)  # already stopped
    assert rt.bus.take() == []
    assert reasons(rt, svc.id).count(("Stopped", "user")) == 1


def test_a_version_another_service_uses_stays_loaded(rt):
    first = running(rt, enabled=False)
    version = deployments.get_service(rt, first.id).version_id
    with rt.store.session() as session:
        from detserve.store import ModelVersion

        v = session.get(ModelVersion, version)
    other, _ = deployments.create_service(rt, v, "cpu", "other", {"enabled": False, "hours": 1})
    rt.bus.take()
    assert deployments.stop(rt, first.id)
    assert rt.bus.take() == []  # no countdown to revoke, and the version is still in use
    deployments.stop(rt, other.id)
    assert rt.bus.take() == [("unload", str(version))]


def test_patch_rearms_a_running_service_from_now_and_revokes_the_old_countdown(rt):
    svc = running(rt, hours=1)
    rt.bus.take()
    after = deployments.update_auto_stop(rt, svc.id, {"enabled": True, "hours": 3})
    assert after.auto_stop_hours == 3 and after.stop_token not in (None, svc.stop_token)
    assert after.stop_at - svc.stop_at >= timedelta(seconds=2 * HOUR - 1)
    assert rt.bus.take() == [("revoke", svc.stop_token),
                             ("countdown", svc.id, after.stop_token, after.stop_at.isoformat())]
    off = deployments.update_auto_stop(rt, svc.id, {"enabled": False, "hours": 3})
    assert (off.stop_at, off.stop_token) == (None, None)
    assert rt.bus.take() == [("revoke", after.stop_token)]


def test_patch_of_a_stopped_service_arms_nothing(rt):
    svc = running(rt)
    deployments.stop(rt, svc.id)
    rt.bus.take()
    after = deployments.update_auto_stop(rt, svc.id, {"enabled": True, "hours": 5})
    assert (after.auto_stop_hours, after.stop_at, after.stop_token) == (5, None, None)
    assert rt.bus.take() == []


def test_start_is_a_no_op_while_active_and_redeploys_when_stopped(rt):
    svc = running(rt)
    rt.bus.take()
    assert deployments.start(rt, svc.id).status == status.RUNNING and rt.bus.take() == []
    deployments.stop(rt, svc.id)
    rt.bus.take()
    assert deployments.start(rt, svc.id).status == status.DEPLOYING
    assert rt.bus.take() == [("deploy", svc.id, "cpu")]


def past_due(rt, sid: str, seconds: float = 5.0) -> None:
    with rt.store.session() as session:
        session.get(Service, sid).stop_at = utcnow() - timedelta(seconds=seconds)


def test_sweep_stops_only_running_services_past_their_stop_at(rt):
    due, not_yet, off = running(rt), running(rt), running(rt, enabled=False)
    past_due(rt, due.id)
    assert deployments.sweep(rt) == [due.id]
    assert [deployments.get_service(rt, s.id).status for s in (due, not_yet, off)] == [
        status.STOPPED, status.RUNNING, status.RUNNING]
    assert reasons(rt, due.id)[-1] == ("Stopped", "auto_stop")
    assert deployments.sweep(rt) == []


def test_fail_stuck_deploys_fails_only_old_deploys(rt):
    old, fresh = new_service(rt), new_service(rt)
    with rt.store.session() as session:
        session.get(Service, old).updated_at = utcnow() - timedelta(seconds=100)
    assert repairs.fail_stuck_deploys(rt, 50.0) == [old]
    assert deployments.get_service(rt, old).status == status.FAILED
    assert "start it again" in deployments.get_service(rt, old).error
    assert deployments.get_service(rt, fresh).status == status.DEPLOYING


def test_recover_redeploys_what_should_be_up_and_keeps_its_arming(rt):
    up, deploying, stopping, due = running(rt), new_service(rt), running(rt), running(rt)
    stopped, stopping_too = running(rt), running(rt)
    deployments.stop(rt, stopped.id)
    for svc in (stopping, stopping_too):
        status.transition(rt.store, svc.id, status.RUNNING, status.STOPPING, reason="test")
    past_due(rt, due.id)
    rt.bus.take()
    assert sorted(deployments.recover(rt)) == sorted([up.id, deploying])
    sent = rt.bus.take()
    assert sorted(m for m in sent if m[0] == "deploy") == sorted([("deploy", up.id, "cpu"),
                                                                  ("deploy", deploying, "cpu")])
    assert deployments.get_service(rt, stopping.id).status == status.STOPPED
    assert deployments.get_service(rt, stopping_too.id).status == status.STOPPED
    assert deployments.get_service(rt, due.id).status == status.STOPPED  # came due while down
    assert deployments.get_service(rt, stopped.id).status == status.STOPPED
    # the redeployed service keeps the arming it had, and its countdown is sent again
    assert deployments.complete_deploy(rt, up.id, lambda v: None) == status.RUNNING
    again = deployments.get_service(rt, up.id)
    assert (again.stop_token, again.stop_at) == (up.stop_token, up.stop_at)
    assert rt.bus.take() == [("countdown", up.id, up.stop_token, up.stop_at.isoformat())]


def test_rotate_key_and_delete(rt):
    svc = running(rt)
    old = deployments.get_service(rt, svc.id).key_hash
    key = deployments.rotate_key(rt, svc.id)
    assert deployments.get_service(rt, svc.id).key_hash == deployments.hash_key(key) != old
    deployments.delete_service(rt, svc.id)
    with pytest.raises(NotFound):
        deployments.get_service(rt, svc.id)
    with rt.store.session(readonly=True) as session:
        from sqlalchemy import select

        assert session.scalars(select(ServiceEvent).where(ServiceEvent.service_id == svc.id)).all() == []
    with pytest.raises(NotFound):
        deployments.rotate_key(rt, svc.id)


def test_a_new_service_has_one_node_and_a_long_key(rt):
    version = register_version(rt, "k", build_blob_detector().SerializeToString(), None,
                               status.SUCCESSFUL, max_bytes=1 << 30)
    service, key = deployments.create_service(rt, version, "cpu", None, {"enabled": True, "hours": 1})
    assert service.compute_nodes == 1 and service.name == "k-v1" and service.running_seconds == 0.0
    assert len(key) >= 32 and service.key_hash == deployments.hash_key(key)  # 24 random bytes
    assert len(deployments.rotate_key(rt, service.id)) >= 32


def test_a_deploy_delivered_again_to_a_running_service_loads_nothing(rt):
    # tasks are acknowledged late: a worker that dies after finishing gets the deploy again
    svc = running(rt)
    rt.bus.take()
    loaded = []
    assert deployments.complete_deploy(rt, svc.id, loaded.append) == status.RUNNING
    assert loaded == [] and rt.bus.take() == []
    assert deployments.complete_deploy(rt, "no-such-service", loaded.append) == "missing"
    assert loaded == []


def test_a_stop_during_a_load_that_fails_leaves_it_stopped(rt):
    sid = new_service(rt)

    def stopped_then_broken(_version):
        assert deployments.stop(rt, sid)
        raise RuntimeError("no such operator")

    deployments.complete_deploy(rt, sid, stopped_then_broken)  # no StaleTransition escapes
    svc = deployments.get_service(rt, sid)
    assert svc.status == status.STOPPED and svc.error is None


def test_a_stuck_deploy_that_finishes_while_the_sweep_looks_is_left_running(rt):
    from sqlalchemy import event

    sid = new_service(rt)
    with rt.store.session() as session:
        session.get(Service, sid).updated_at = utcnow() - timedelta(seconds=100)
    finished = []

    def deploy_finishes(conn, cursor, statement, *args):
        if not finished and statement.lstrip().upper().startswith("SELECT") and "services.id" in statement:
            finished.append(True)  # after the sweep read it as stuck, before it fails it
            status.transition(rt.store, sid, status.DEPLOYING, status.RUNNING, reason="deployed")

    event.listen(rt.store.engine, "after_cursor_execute", deploy_finishes)
    try:
        assert repairs.fail_stuck_deploys(rt, 50.0) == []
    finally:
        event.remove(rt.store.engine, "after_cursor_execute", deploy_finishes)
    assert finished == [True] and deployments.get_service(rt, sid).status == status.RUNNING


def test_an_hour_is_3600_seconds_unless_shrunk():
    assert deployments.Runtime(None, None, None).hour_seconds == 3600.0  # type: ignore[arg-type]


def test_arm_arms_only_a_running_service(rt):
    svc = running(rt, enabled=True)
    deployments.stop(rt, svc.id)
    rt.bus.take()
    deployments.arm(rt, svc.id)  # stopped meanwhile: nothing to arm
    after = deployments.get_service(rt, svc.id)
    assert (after.stop_at, after.stop_token) == (None, None) and rt.bus.take() == []


def test_a_stop_that_loses_to_another_stop_says_so_and_sends_nothing(rt):
    from sqlalchemy import event

    svc = running(rt)
    rt.bus.take()
    done = []

    def other_stop(conn, cursor, statement, *args):
        reads = statement.lstrip().upper().startswith("SELECT") and "services.stop_token" in statement
        if reads and not done:
            done.append(True)  # after this stop read the service, before it moves it
            status.transition(rt.store, svc.id, status.RUNNING, status.STOPPING, reason="other")

    event.listen(rt.store.engine, "after_cursor_execute", other_stop)
    try:
        assert deployments.stop(rt, svc.id) is False
    finally:
        event.remove(rt.store.engine, "after_cursor_execute", other_stop)
    assert done == [True] and rt.bus.take() == []
    assert deployments.get_service(rt, svc.id).status == status.STOPPING  # the other stop's to finish


def test_stuck_deploys_after_one_that_finished_are_still_failed(rt):
    from sqlalchemy import event

    first, second = new_service(rt), new_service(rt)
    with rt.store.session() as session:
        for sid in (first, second):
            session.get(Service, sid).updated_at = utcnow() - timedelta(seconds=100)
    finished = []

    def one_finishes(conn, cursor, statement, *args):
        if not finished and statement.lstrip().upper().startswith("SELECT") and "services.id" in statement:
            rows = cursor.fetchall()  # the order the sweep will see them in
            finished.append(rows[0][0])
            status.transition(rt.store, rows[0][0], status.DEPLOYING, status.RUNNING, reason="deployed")
            cursor.execute(statement, *args[:1])  # the sweep reads the same rows again

    event.listen(rt.store.engine, "after_cursor_execute", one_finishes)
    try:
        failed = repairs.fail_stuck_deploys(rt, 50.0)
    finally:
        event.remove(rt.store.engine, "after_cursor_execute", one_finishes)
    assert failed == [s for s in (first, second) if s != finished[0]]


# ---- races and faults the mutation run (make mutate) found untested ---------------------------


def before_transition(monkeypatch, to: str, action) -> None:
    """Run `action` (another caller, racing) once, just before the next transition to `to`."""
    real, pending = status.transition, [action]

    def transition(store, service_id, expected, new, **kwargs):
        if new == to and pending:
            pending.pop()()
        return real(store, service_id, expected, new, **kwargs)

    monkeypatch.setattr(status, "transition", transition)


def test_a_patch_landing_just_before_running_is_armed_with_the_new_setting(rt, monkeypatch):
    # the PATCH sees Deploying and leaves the arming to the deploy, which read the old setting
    sid = new_service(rt, hours=1)
    before_transition(monkeypatch, status.RUNNING,
                      lambda: deployments.update_auto_stop(rt, sid, {"enabled": True, "hours": 3}))
    before = utcnow()
    assert deployments.complete_deploy(rt, sid, lambda v: None) == status.RUNNING
    svc = deployments.get_service(rt, sid)
    assert svc.auto_stop_hours == 3 and svc.stop_at >= before + timedelta(seconds=3 * HOUR)
    assert rt.bus.take()[-1] == ("countdown", sid, svc.stop_token, svc.stop_at.isoformat())


def test_a_patch_while_redeploying_after_a_restart_replaces_the_kept_arming(rt):
    old = running(rt, hours=1)
    assert deployments.recover(rt) == [old.id]  # Running -> Deploying, the arming kept
    rt.bus.take()
    deployments.update_auto_stop(rt, old.id, {"enabled": True, "hours": 3})
    assert ("revoke", old.stop_token) in rt.bus.take()
    before = utcnow()
    assert deployments.complete_deploy(rt, old.id, lambda v: None) == status.RUNNING
    svc = deployments.get_service(rt, old.id)
    assert svc.stop_token != old.stop_token and svc.stop_at >= before + timedelta(seconds=3 * HOUR)


def test_traffic_limit_is_set_and_cleared_and_an_unknown_service_is_404(rt):
    sid = new_service(rt)
    deployments.update_traffic_limit(rt, sid, 2.5)
    assert deployments.get_service(rt, sid).traffic_limit_qps == 2.5
    deployments.update_traffic_limit(rt, sid, None)
    assert deployments.get_service(rt, sid).traffic_limit_qps is None
    with pytest.raises(NotFound):
        deployments.update_traffic_limit(rt, "no-such-service", 1.0)


def test_a_model_loaded_for_a_service_stopped_meanwhile_is_dropped_unless_in_use(rt):
    dropped: list[int] = []
    sid = new_service(rt)
    assert deployments.complete_deploy(rt, sid, lambda v: deployments.stop(rt, sid),
                                       dropped.append) == status.STOPPED
    assert dropped == [deployments.get_service(rt, sid).version_id]
    # another service running the same version keeps it loaded
    other = running(rt)
    version_id = other.version_id
    with rt.store.session() as session:
        version = session.get(deployments.ModelVersion, version_id)
    service, _ = deployments.create_service(rt, version, "cpu", None, {"enabled": False, "hours": 1})
    dropped.clear()
    assert deployments.complete_deploy(rt, service.id, lambda v: deployments.stop(rt, service.id),
                                       dropped.append) == status.STOPPED
    assert dropped == []


def test_a_user_stop_racing_start_up_recovery_is_skipped_and_the_rest_recovered(rt, monkeypatch):
    first, second = running(rt), running(rt)
    rows = sorted([first.id, second.id])  # recover walks them in the database's order
    stops: list[str] = []

    def user_stops_the_one_being_recovered():
        with rt.store.session(readonly=True) as session:
            current = [s.id for s in session.scalars(deployments.select(Service).where(
                Service.id.in_(rows))) if s.status == status.RUNNING][0]
        stops.append(current)
        assert deployments.stop(rt, current)

    before_transition(monkeypatch, status.DEPLOYING, user_stops_the_one_being_recovered)
    rt.bus.take()
    redeployed = deployments.recover(rt)
    (stopped,) = stops
    assert redeployed == [s for s in rows if s != stopped]
    assert deployments.get_service(rt, stopped).status == status.STOPPED
    assert [m for m in rt.bus.take() if m[0] == "deploy"] == [("deploy", redeployed[0], "cpu")]


def test_two_starts_at_once_deploy_once(rt, monkeypatch):
    sid = running(rt).id
    deployments.stop(rt, sid)
    rt.bus.take()
    before_transition(monkeypatch, status.DEPLOYING, lambda: deployments.start(rt, sid))
    assert deployments.start(rt, sid).status == status.DEPLOYING  # the loser is a no-op
    assert [m for m in rt.bus.take() if m[0] == "deploy"] == [("deploy", sid, "cpu")]


OUTAGE = (redis.RedisError, OperationalError)  # what a send to a broker that is down raises


@pytest.fixture()
def dead_broker_rt(tmp_path, redis_base):
    """A runtime whose broker is down: a real Celery app on a port nothing listens on."""
    from support import free_port

    settings = make_settings(tmp_path / "settings", redis_base)
    app = make_celery(dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}"))
    store = Store(f"sqlite:///{tmp_path / 'detserve.db'}")
    store.migrate()
    yield deployments.Runtime(store, ArtifactStore(tmp_path / "artifacts"), CeleryBus(app), HOUR)
    store.dispose()


def test_a_deploy_the_broker_refuses_leaves_the_service_failed_and_raises(dead_broker_rt):
    rt = dead_broker_rt
    version = register_version(rt, "m", build_blob_detector().SerializeToString(), None,
                               status.SUCCESSFUL, max_bytes=1 << 30)
    with pytest.raises(OUTAGE):
        deployments.create_service(rt, version, "cpu", None, {"enabled": True, "hours": 1})
    with rt.store.session(readonly=True) as session:
        (svc,) = session.scalars(deployments.select(Service)).all()
    assert svc.status == status.FAILED and "could not be queued" in svc.error


def test_a_refused_deploy_of_a_service_stopped_meanwhile_raises_the_outage(dead_broker_rt, monkeypatch):
    rt = dead_broker_rt
    version = register_version(rt, "m", build_blob_detector().SerializeToString(), None,
                               status.SUCCESSFUL, max_bytes=1 << 30)
    real_deploy = CeleryBus.deploy

    def stopped_then_refused(bus, service_id, flavor):
        status.transition(rt.store, service_id, status.DEPLOYING, status.STOPPING, reason="user")
        status.transition(rt.store, service_id, status.STOPPING, status.STOPPED, reason="user")
        real_deploy(bus, service_id, flavor)

    monkeypatch.setattr(CeleryBus, "deploy", stopped_then_refused)
    with pytest.raises(OUTAGE):  # the outage, not the lost compare-and-set
        deployments.create_service(rt, version, "cpu", None, {"enabled": True, "hours": 1})
    with rt.store.session(readonly=True) as session:
        (svc,) = session.scalars(deployments.select(Service)).all()
    assert svc.status == status.STOPPED


def test_a_move_to_failed_is_logged_as_a_warning_and_others_as_info(rt, caplog):
    sid = new_service(rt)
    caplog.set_level(logging.INFO, logger="detserve.service.status")
    status.transition(rt.store, sid, status.DEPLOYING, status.FAILED, reason="deploy_failed", error="bad")
    status.transition(rt.store, sid, status.FAILED, status.DEPLOYING, reason="user")
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "detserve.service.status"] == [
        ("WARNING", "Deploying -> Failed (deploy_failed): bad"), ("INFO", "Failed -> Deploying (user)")]
