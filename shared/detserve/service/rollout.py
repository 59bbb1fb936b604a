"""Changing a service's versions and weights (traffic.py says what a split is).

- A service that is not Running takes the new split at once; its next deploy loads it all.
- A Running service keeps answering with its current split while the new one waits in
  `pending_traffic` ({"versions", "token", "state": loading|failed, "error", "requested_at"})
  and a worker of its flavor loads every version in it (the worker.switch task,
  `complete_switch`). Once all are loaded, one UPDATE makes the new split the live one, if the
  change is still the latest (its token); versions no service serves any more are then unloaded.
  A version that fails to load leaves the old split serving and the change `failed`, with the
  reason, until the next change.
- Stopping (or a restart's redeploy of) a service with a change still loading makes the change
  its split: nothing serves meanwhile, and the next deploy loads it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from detserve.errors import (
    NotFound,
    Unavailable,
    ValidationFailed,
    VersionNotDeployable,
    for_caller,
    quoted,
)
from detserve.service import status, traffic
from detserve.service.deployments import Runtime, drop_unused, get_service, unload_unused
from detserve.store import ModelVersion, Service, utcnow

log = logging.getLogger("detserve.service.rollout")


def resolve(rt: Runtime, model: str, items: Sequence[Mapping[str, Any]]) -> list[traffic.Entry]:
    """The stored split for requested {"version", "weight"} items of `model`.

    Raises:
        ValidationFailed: a version the model does not have (naming those it has).
        VersionNotDeployable: a version that is not Successful.
    """
    numbers = [int(i["version"]) for i in items]
    with rt.store.session(readonly=True) as session:
        rows = {v.version: v for v in session.scalars(
            select(ModelVersion).where(ModelVersion.model == model))}
    missing = [n for n in numbers if n not in rows]
    if missing:
        have = ", ".join(str(n) for n in sorted(rows)) or "none"
        problem = (f"model {quoted(model)} has no version {', '.join(map(str, missing))}; "
                   f"its versions are: {have}")
        raise ValidationFailed(f"invalid versions ({problem})", fields={"versions": [problem]})
    for n in numbers:
        if rows[n].status != status.SUCCESSFUL:
            raise VersionNotDeployable(f"version {n} of {quoted(model)} is {rows[n].status}; only "
                                       "Successful versions can be deployed")
    return [{"version": int(i["version"]), "version_id": rows[int(i["version"])].id,
             "weight": int(i["weight"])} for i in items]


def change(rt: Runtime, service_id: str, items: Sequence[Mapping[str, Any]]) -> None:
    """Ask for a new split (see the module's story). Nothing is stored when a version is bad.

    Raises:
        NotFound, ValidationFailed, VersionNotDeployable: as resolve() and get_service().
        Unavailable: the broker refused the load (the change is `failed`, old split serving).
    """
    entries = resolve(rt, get_service(rt, service_id).model, items)
    token = uuid.uuid4().hex
    with rt.store.session() as session:
        row = _locked(session, service_id)
        before = traffic.live_ids(row)
        if row.status == status.RUNNING:
            row.pending_traffic = {"versions": entries, "token": token, "state": traffic.LOADING,
                                   "error": None, "requested_at": utcnow().isoformat()}
        else:
            for name, value in traffic.apply_fields(entries).items():
                setattr(row, name, value)
            row.pending_traffic = None
        row.updated_at = utcnow()
        running, flavor = row.status == status.RUNNING, row.flavor
    if not running:
        unload_unused(rt, before)
        return
    try:
        rt.bus.switch(service_id, flavor, token)
    except Exception as exc:
        _fail(rt, service_id, token, "the change could not be queued (the broker did not "
                                     "answer); send it again")
        raise Unavailable("the broker did not take the change of versions; the current ones "
                          "keep serving; try again") from exc
    log.info("versions %s asked for; loading them first",
             ", ".join(f"v{e['version']}:{e['weight']}" for e in entries),
             extra={"service_id": service_id})


def complete_switch(rt: Runtime, service_id: str, token: str, load: Callable[[Any], Any],
                    drop: Callable[[int], None] | None = None, unload_after: float = 0.0) -> str:
    """The worker's side: load every version of the change `token`, then make it the live split.

    The versions no service serves any more are unloaded `unload_after` s later (the worker
    gives its prediction timeout): a request that chose one just before the switch, its frame
    still queued, is answered by the model it chose rather than by a reload of it.

    Returns "switched", "failed" (a version did not load: the old split serves on), or "stale"
    (the change was replaced, or the service left Running, meanwhile).
    """
    with rt.store.session(readonly=True) as session:
        row = session.get(Service, service_id)
        pending = row.pending_traffic if row is not None else None
        if not pending or pending.get("token") != token or pending.get("state") != traffic.LOADING:
            return "stale"
        entries = traffic.asked(pending)
        versions = {e["version_id"]: session.get(ModelVersion, e["version_id"]) for e in entries}
    current = None
    try:
        for entry in entries:
            current = entry
            version = versions[entry["version_id"]]
            if version is None:
                raise ValidationFailed(f"version {entry['version']} was deleted")
            load(version)
    except Exception as exc:  # the caller reads why; the old split keeps serving
        log.warning("loading versions for service %s failed", service_id, exc_info=exc)
        message = for_caller(exc, "loading the model").message
        failed_at = f"version {current['version']}: " if current else ""
        _fail(rt, service_id, token, failed_at + message)
        drop_unused(rt, set(versions), drop)
        return traffic.FAILED
    with rt.store.session() as session:
        row = _locked(session, service_id, missing_ok=True)
        latest = row is not None and (row.pending_traffic or {}).get("token") == token
        if latest and row is not None and row.status == status.RUNNING:
            before = traffic.live_ids(row)
            for name, value in traffic.apply_fields(entries).items():
                setattr(row, name, value)
            row.pending_traffic = None
            row.updated_at = utcnow()
        else:
            latest = False
    if not latest:
        drop_unused(rt, set(versions), drop)
        return "stale"
    log.info("now serving %s", ", ".join(f"v{e['version']}:{e['weight']}" for e in entries),
             extra={"service_id": service_id})
    if unload_after > 0:
        timer = threading.Timer(unload_after, _unload_quietly, (rt, before - set(versions)))
        timer.daemon = True  # a worker that stops first drops them anyway (keep_only)
        timer.start()
    else:
        unload_unused(rt, before - set(versions))
    return "switched"


def _locked(session: Any, service_id: str, missing_ok: bool = False) -> Any:
    """The service's row for a read-then-write (SQLite writers hold the lock from BEGIN)."""
    row = session.scalar(select(Service).where(Service.id == service_id).with_for_update())
    if row is None and not missing_ok:
        raise NotFound(f"no service {quoted(service_id)}")
    return row


def _fail(rt: Runtime, service_id: str, token: str, error: str) -> None:
    with rt.store.session() as session:
        row = _locked(session, service_id, missing_ok=True)
        pending = row.pending_traffic if row is not None else None
        if row is not None and pending and pending.get("token") == token:
            row.pending_traffic = {**pending, "state": traffic.FAILED, "error": error}
            row.updated_at = utcnow()


def _unload_quietly(rt: Runtime, version_ids: set[int]) -> None:
    try:
        unload_unused(rt, version_ids)
    except Exception as exc:  # noqa: BLE001 - a worker's next reconnect drops them (keep_only)
        log.warning("could not unload versions %s after a switch: %s", sorted(version_ids), exc)


def fail_stuck_changes(rt: Runtime, timeout: float) -> list[str]:
    """Changes of versions still loading after `timeout` s (their load was lost: the flavor's
    workers went away): `failed` with the reason, the current versions serving on (the
    scheduler's sweep, beside repairs.fail_stuck_deploys)."""
    cutoff = utcnow().timestamp() - timeout
    with rt.store.session(readonly=True) as session:
        rows = session.execute(select(Service.id, Service.pending_traffic).where(
            Service.pending_traffic.is_not(None))).all()
    failed = []
    for sid, pending in rows:
        if pending.get("state") != traffic.LOADING or _requested(pending) > cutoff:
            continue
        _fail(rt, sid, pending["token"], f"no worker loaded the new versions within {timeout:g} s "
              "(a worker may have stopped, or none of its flavor is running); the current "
              "versions keep serving; send the change again")
        failed.append(sid)
    return failed


def _requested(pending: Mapping[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(pending.get("requested_at"))).timestamp()
    except ValueError:
        return 0.0  # unreadable: as old as can be
