"""Changing a service's versions (service/rollout.py) on a real SQLite store and a real Celery
bus over Redis (no worker takes the messages: the test plays the worker's part with
complete_switch and reads what was sent). End to end: tests/integration/test_versions.py."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from test_deployments import HOUR, RecordingBus

from conftest import make_settings
from detserve.celery_app import make_celery
from detserve.errors import NotFound, ValidationFailed, VersionInUse, VersionNotDeployable
from detserve.service import deployments, rollout, status
from detserve.service.artifacts import ArtifactStore
from detserve.service.demo import build_blob_detector
from detserve.service.versions import delete_version, register_version
from detserve.store import Store

MODEL = build_blob_detector().SerializeToString()
PG_URL = os.environ.get("DETSERVE_TEST_POSTGRES_URL")


class SwitchBus(RecordingBus):
    def switch(self, service_id: str, flavor: str, token: str) -> None:
        self.sent.append(("switch", service_id, flavor, token))
        super().switch(service_id, flavor, token)


@pytest.fixture(scope="module")
def celery_app(tmp_path_factory, redis_base):
    return make_celery(make_settings(tmp_path_factory.mktemp("rollout"), redis_base))


@pytest.fixture(params=["sqlite", "postgresql"])
def vrt(request, tmp_path, celery_app):
    """A fresh database for each test: SQLite, and PostgreSQL in a schema of its own where
    DETSERVE_TEST_POSTGRES_URL names one (the JSON columns and the row lock on both)."""
    admin, schema = None, f"t_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'detserve.db'}")
    elif not PG_URL:
        pytest.skip("set DETSERVE_TEST_POSTGRES_URL to run the rollout suite on PostgreSQL too")
    else:
        admin = create_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        store = Store(f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}")
    store.migrate()
    yield deployments.Runtime(store, ArtifactStore(tmp_path / "artifacts"), SwitchBus(celery_app),
                              HOUR)
    store.dispose()
    if admin is not None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def versions(rt: Any, n: int, state: str = status.SUCCESSFUL) -> list[Any]:
    return [register_version(rt, "m", MODEL, None, state, max_bytes=1 << 30) for _ in range(n)]


def running(rt: Any, split: list[dict[str, int]]) -> str:
    entries = rollout.resolve(rt, "m", split)
    primary = next(v for v in versions_of(rt) if v.id == max(entries, key=lambda e: e["weight"])[
        "version_id"])
    service, _ = deployments.create_service(rt, primary, "cpu", None,
                                            {"enabled": False, "hours": 1}, None, entries)
    loaded: list[Any] = []
    assert deployments.complete_deploy(rt, service.id, loaded.append) == status.RUNNING
    # every version it serves is loaded, the primary last (its steps end the deploy's progress)
    assert sorted(v.version for v in loaded) == sorted(e["version"] for e in entries)
    assert loaded[-1].id == primary.id
    rt.bus.take()
    return service.id


def versions_of(rt: Any) -> list[Any]:
    from sqlalchemy import select

    from detserve.store import ModelVersion

    with rt.store.session(readonly=True) as session:
        return list(session.scalars(select(ModelVersion)))


def split_of(rt: Any, sid: str) -> list[tuple[int, int]]:
    svc = deployments.get_service(rt, sid)
    return [(e["version"], e["weight"]) for e in svc.traffic]


def test_a_running_service_switches_only_once_its_new_versions_are_loaded(vrt):
    v1, v2, v3 = versions(vrt, 3)
    sid = running(vrt, [{"version": 1, "weight": 100}])
    # when the versions change on a Running service
    rollout.change(vrt, sid, [{"version": 2, "weight": 70}, {"version": 3, "weight": 30}])
    # then it serves the old split while a worker is asked to load the new one
    svc = deployments.get_service(vrt, sid)
    assert split_of(vrt, sid) == [(1, 100)] and svc.version == 1
    assert svc.pending_traffic["state"] == "loading"
    token = svc.pending_traffic["token"]
    assert vrt.bus.take() == [("switch", sid, "cpu", token)]
    # and the versions being loaded are in use (no unload may drop them meanwhile)
    assert {v1.id, v2.id, v3.id} <= deployments.versions_in_use(vrt)
    # when the worker has loaded them
    loaded: list[int] = []
    assert rollout.complete_switch(vrt, sid, token, lambda v: loaded.append(v.id)) == "switched"
    assert loaded == [v2.id, v3.id]
    svc = deployments.get_service(vrt, sid)
    assert split_of(vrt, sid) == [(2, 70), (3, 30)] and svc.pending_traffic is None
    assert (svc.version, svc.version_id) == (2, v2.id)  # the primary: the highest weight
    assert vrt.bus.take() == [("unload", str(v1.id))]  # served by no one now
    assert svc.status == status.RUNNING  # no stop, no redeploy


def test_a_version_that_fails_to_load_leaves_the_old_split_serving(vrt):
    _, v2 = versions(vrt, 2)
    sid = running(vrt, [{"version": 1, "weight": 100}])
    rollout.change(vrt, sid, [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}])
    token = deployments.get_service(vrt, sid).pending_traffic["token"]
    vrt.bus.take()
    dropped: list[int] = []

    def broken(version):
        if version.id == v2.id:
            raise RuntimeError("no such operator")

    assert rollout.complete_switch(vrt, sid, token, broken, dropped.append) == "failed"
    svc = deployments.get_service(vrt, sid)
    assert split_of(vrt, sid) == [(1, 100)] and svc.status == status.RUNNING
    assert svc.pending_traffic["state"] == "failed"
    assert svc.pending_traffic["error"].startswith("version 2: Loading the model failed")
    assert dropped == [v2.id]  # what this worker loaded for nothing; v1 still serves


def test_a_newer_change_wins_over_one_still_loading(vrt):
    versions(vrt, 3)
    sid = running(vrt, [{"version": 1, "weight": 100}])
    rollout.change(vrt, sid, [{"version": 2, "weight": 100}])
    first = deployments.get_service(vrt, sid).pending_traffic["token"]
    rollout.change(vrt, sid, [{"version": 3, "weight": 100}])
    second = deployments.get_service(vrt, sid).pending_traffic["token"]
    assert rollout.complete_switch(vrt, sid, first, lambda v: None) == "stale"
    assert split_of(vrt, sid) == [(1, 100)]
    assert rollout.complete_switch(vrt, sid, second, lambda v: None) == "switched"
    assert split_of(vrt, sid) == [(3, 100)]
    assert rollout.complete_switch(vrt, sid, second, lambda v: None) == "stale"  # redelivered


def test_a_stop_while_loading_makes_the_change_the_split_for_the_next_deploy(vrt):
    _, v2 = versions(vrt, 2)
    sid = running(vrt, [{"version": 1, "weight": 100}])
    rollout.change(vrt, sid, [{"version": 2, "weight": 100}])
    token = deployments.get_service(vrt, sid).pending_traffic["token"]
    assert deployments.stop(vrt, sid)
    svc = deployments.get_service(vrt, sid)
    assert split_of(vrt, sid) == [(2, 100)] and svc.pending_traffic is None
    # the worker's load finishes after the stop: it switches nothing and drops what it loaded
    dropped: list[int] = []
    assert rollout.complete_switch(vrt, sid, token, lambda v: None, dropped.append) == "stale"
    # and the next deploy loads the new version
    deployments.start(vrt, sid)
    loaded: list[Any] = []
    assert deployments.complete_deploy(vrt, sid, loaded.append) == status.RUNNING
    assert [v.id for v in loaded] == [v2.id]


def test_a_service_that_is_not_running_takes_the_change_at_once(vrt):
    v1, v2 = versions(vrt, 2)
    sid = running(vrt, [{"version": 1, "weight": 100}])
    deployments.stop(vrt, sid)
    vrt.bus.take()
    rollout.change(vrt, sid, [{"version": 1, "weight": 10}, {"version": 2, "weight": 90}])
    assert split_of(vrt, sid) == [(1, 10), (2, 90)]
    assert deployments.get_service(vrt, sid).pending_traffic is None
    assert [m[0] for m in vrt.bus.take()] == ["unload"]  # no switch: nothing is serving


def test_stop_unloads_every_version_the_service_served(vrt):
    v1, v2 = versions(vrt, 2)
    sid = running(vrt, [{"version": 1, "weight": 60}, {"version": 2, "weight": 40}])
    assert deployments.stop(vrt, sid)
    assert sorted(m for m in vrt.bus.take() if m[0] == "unload") == [
        ("unload", str(v1.id)), ("unload", str(v2.id))]


@pytest.mark.parametrize("split, error, what", [
    ([{"version": 9, "weight": 100}], ValidationFailed, "has no version 9; its versions are: 1, 2"),
    ([{"version": 1, "weight": 50}, {"version": 3, "weight": 50}], VersionNotDeployable,
     "version 3 of 'm' is Training"),
])
def test_a_bad_change_stores_nothing(vrt, split, error, what):
    versions(vrt, 2)
    versions(vrt, 1, status.TRAINING)
    sid = running(vrt, [{"version": 1, "weight": 100}])
    before = deployments.get_service(vrt, sid)
    with pytest.raises(error) as caught:
        rollout.change(vrt, sid, split)
    assert what in caught.value.message
    after = deployments.get_service(vrt, sid)
    assert (after.traffic, after.pending_traffic, after.updated_at) == (
        before.traffic, before.pending_traffic, before.updated_at)
    assert vrt.bus.take() == []
    with pytest.raises(NotFound):
        rollout.change(vrt, "nosuch", [{"version": 1, "weight": 100}])


def test_a_version_another_service_serves_cannot_be_deleted(vrt):
    versions(vrt, 2)
    running(vrt, [{"version": 1, "weight": 80}, {"version": 2, "weight": 20}])
    with pytest.raises(VersionInUse, match="one of the versions of service"):
        delete_version(vrt, "m", 2)


def test_a_change_no_worker_loads_fails_after_the_deploy_timeout(vrt):
    versions(vrt, 2)
    sid = running(vrt, [{"version": 1, "weight": 100}])
    rollout.change(vrt, sid, [{"version": 2, "weight": 100}])
    assert rollout.fail_stuck_changes(vrt, 60.0) == []  # asked just now
    assert rollout.fail_stuck_changes(vrt, -1.0) == [sid]
    svc = deployments.get_service(vrt, sid)
    assert svc.pending_traffic["state"] == "failed" and "no worker loaded" in svc.pending_traffic[
        "error"]
    assert split_of(vrt, sid) == [(1, 100)]
    assert rollout.fail_stuck_changes(vrt, -1.0) == []  # once


def test_a_change_while_deploying_is_loaded_by_that_deploy(vrt):
    v1, v2 = versions(vrt, 2)
    service, _ = deployments.create_service(vrt, v1, "cpu", None, {"enabled": False, "hours": 1})
    rollout.change(vrt, service.id, [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}])
    assert split_of(vrt, service.id) == [(1, 50), (2, 50)]  # nothing serves yet: at once
    loaded: list[int] = []
    assert deployments.complete_deploy(vrt, service.id, lambda v: loaded.append(v.id)) == \
        status.RUNNING
    assert sorted(loaded) == [v1.id, v2.id]
    assert [m[0] for m in vrt.bus.take() if m[0] == "switch"] == []


def test_a_change_landing_during_the_deploys_load_is_loaded_too(vrt):
    v1, v2 = versions(vrt, 2)
    service, _ = deployments.create_service(vrt, v1, "cpu", None, {"enabled": False, "hours": 1})
    loaded: list[int] = []

    def load(version):
        if not loaded:  # the first load: the user changes the versions meanwhile
            rollout.change(vrt, service.id, [{"version": 1, "weight": 10},
                                             {"version": 2, "weight": 90}])
        loaded.append(version.id)

    assert deployments.complete_deploy(vrt, service.id, load) == status.RUNNING
    assert sorted(set(loaded)) == [v1.id, v2.id]
    assert deployments.get_service(vrt, service.id).version == 2


def test_the_old_versions_are_unloaded_only_after_the_grace(vrt):
    v1, _ = versions(vrt, 2)
    sid = running(vrt, [{"version": 1, "weight": 100}])
    rollout.change(vrt, sid, [{"version": 2, "weight": 100}])
    token = deployments.get_service(vrt, sid).pending_traffic["token"]
    vrt.bus.take()
    assert rollout.complete_switch(vrt, sid, token, lambda v: None, unload_after=0.3) == "switched"
    assert vrt.bus.take() == []  # requests that chose v1 just before may still be queued
    time.sleep(0.8)
    assert vrt.bus.take() == [("unload", str(v1.id))]
