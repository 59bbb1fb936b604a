"""Service layer: deploy, start, stop, auto stop (versions.py registers versions). Store and bus
are injected."""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from detserve.errors import (
    NotFound,
    StaleTransition,
    VersionNotDeployable,
    for_caller,
    quoted,
)
from detserve.lane.bus import Bus
from detserve.service import status, traffic
from detserve.service.artifacts import ArtifactStore
from detserve.store import ModelVersion, Service, ServiceEvent, Store, utcnow

log = logging.getLogger("detserve.service.deployments")


@dataclass(frozen=True)
class Runtime:
    """What the service layer works with; each entry point builds one."""

    store: Store
    artifacts: ArtifactStore
    bus: Bus
    hour_seconds: float = 3600.0


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# ---- services -----------------------------------------------------------------------------


def create_service(
    rt: Runtime, version: ModelVersion, flavor: str, name: str | None, auto_stop: dict[str, Any],
    traffic_limit_qps: float | None = None, split: list[traffic.Entry] | None = None,
) -> tuple[Service, str]:
    """Record a service in Deploying, send it to the flavor's queue; return it with its key.

    `split`: its versions and weights (rollout.resolve), of which `version` is the primary;
    None: `version` alone.
    """
    if version.status != status.SUCCESSFUL:
        raise VersionNotDeployable(
            f"version {version.version} of {version.model!r} is {version.status}; "
            "only Successful versions can be deployed"
        )
    key = secrets.token_urlsafe(24)
    now = utcnow()
    service = Service(
        id=uuid.uuid4().hex, name=name or f"{version.model}-v{version.version}",
        version_id=version.id, model=version.model, version=version.version, flavor=flavor,
        compute_nodes=1, status=status.DEPLOYING, auto_stop_enabled=auto_stop["enabled"],
        auto_stop_hours=auto_stop["hours"], auto_stop_idle_minutes=auto_stop.get("idle_minutes"),
        key_hash=hash_key(key), running_seconds=0.0, traffic_limit_qps=traffic_limit_qps,
        traffic=traffic.served(split, version.id, version.version), created_at=now, updated_at=now,
    )
    with rt.store.session() as session:
        session.add(service)
        session.add(ServiceEvent(service_id=service.id, at=now, from_status=None,
                                 to_status=status.DEPLOYING, reason="created"))
    _send_deploy(rt, service.id, flavor)  # only after the row is committed
    log.info("created: %s v%s queued for a %s worker", version.model, version.version, flavor,
             extra={"service_id": service.id})
    return service, key


def _send_deploy(rt: Runtime, service_id: str, flavor: str) -> None:
    """Queue the deploy; a broker that refuses it leaves the service Failed with the reason (not
    Deploying with no deploy on its way) and the caller gets the outage (a 503)."""
    try:
        rt.bus.deploy(service_id, flavor)
    except Exception:
        try:
            status.transition(rt.store, service_id, status.DEPLOYING, status.FAILED,
                              reason="deploy_not_sent", error="the deploy could not be queued "
                              "(the broker did not answer); start the service again")
        except StaleTransition:
            pass
        raise


def get_service(rt: Runtime, service_id: str) -> Service:
    with rt.store.session(readonly=True) as session:
        row = session.get(Service, service_id)
    if row is None:
        raise NotFound(f"no service {quoted(service_id)}")
    return row


def find_service(rt: Runtime, service_id: str) -> Service | None:
    with rt.store.session(readonly=True) as session:
        return session.get(Service, service_id)


def start(rt: Runtime, service_id: str, reason: str = "user") -> Service:
    """Stopped or Failed → Deploying and send the deploy; a second start is a no-op."""
    service = get_service(rt, service_id)
    if service.status in status.ACTIVE:
        return service
    try:
        status.transition(rt.store, service_id, status.STARTABLE, status.DEPLOYING, reason=reason,
                          error=None, stop_at=None, stop_token=None)
    except StaleTransition:
        return get_service(rt, service_id)  # a start at the same moment won: this one is a no-op
    _send_deploy(rt, service_id, service.flavor)
    log.info("queued for a %s worker", service.flavor, extra={"service_id": service_id})
    return get_service(rt, service_id)


def stop(rt: Runtime, service_id: str, reason: str = "user",
         billing_until: datetime | None = None) -> bool:
    """Stop a service (→ Stopping → Stopped) and void its countdown; False if already stopped."""
    service = get_service(rt, service_id)
    if service.status not in status.STOPPABLE:
        return False
    try:
        status.transition(rt.store, service_id, status.STOPPABLE, status.STOPPING, reason=reason,
                          billing_until=billing_until, stop_at=None, stop_token=None,
                          **traffic.promoted(service))
    except StaleTransition:
        return False  # someone else stopped it first
    if service.stop_token:
        rt.bus.revoke(service.stop_token)
    unload_unused(rt, traffic.served_ids(service))
    status.transition(rt.store, service_id, status.STOPPING, status.STOPPED, reason=reason)
    return True


def delete_service(rt: Runtime, service_id: str) -> None:
    stop(rt, service_id)
    with rt.store.session() as session:
        row = session.get(Service, service_id)
        if row is not None:
            session.delete(row)


def rotate_key(rt: Runtime, service_id: str) -> str:
    """A new prediction key; the old one stops working at once."""
    get_service(rt, service_id)
    key = secrets.token_urlsafe(24)
    with rt.store.session() as session:
        row = session.get(Service, service_id)
        if row is None:
            raise NotFound(f"no service {quoted(service_id)}")
        row.key_hash = hash_key(key)
        row.updated_at = utcnow()
    return key


def update_traffic_limit(rt: Runtime, service_id: str, qps: float | None) -> None:
    """Set the service's traffic limit (None: none); the next prediction obeys it."""
    with rt.store.session() as session:
        row = session.get(Service, service_id)
        if row is None:
            raise NotFound(f"no service {quoted(service_id)}")
        row.traffic_limit_qps = qps
        row.updated_at = utcnow()


def update_auto_stop(rt: Runtime, service_id: str, auto_stop: dict[str, Any]) -> Service:
    """Change the auto-stop setting; a Running service is re-armed from now."""
    old = get_service(rt, service_id)
    with rt.store.session() as session:
        row = session.get(Service, service_id)
        if row is None:
            raise NotFound(f"no service {quoted(service_id)}")
        row.auto_stop_enabled = auto_stop["enabled"]
        row.auto_stop_hours = auto_stop["hours"]
        row.auto_stop_idle_minutes = auto_stop.get("idle_minutes")
        row.updated_at = utcnow()
        if row.status != status.RUNNING:  # an old arming kept for a redeploy no longer applies
            row.stop_at, row.stop_token = None, None
    if old.stop_token:
        rt.bus.revoke(old.stop_token)
    # Read the status after our write: a deploy that finished meanwhile armed with the old
    # setting (or re-reads ours itself, complete_deploy), so a Running service is armed anew.
    if get_service(rt, service_id).status == status.RUNNING:
        arm(rt, service_id)
    return get_service(rt, service_id)


def events(rt: Runtime, service_id: str) -> list[ServiceEvent]:
    get_service(rt, service_id)
    with rt.store.session(readonly=True) as session:
        return list(session.scalars(
            select(ServiceEvent).where(ServiceEvent.service_id == service_id)
            .order_by(ServiceEvent.id)
        ))


def versions_in_use(rt: Runtime) -> set[int]:
    """The versions of every Deploying or Running service, those of a change of versions being
    loaded included: what workers should keep loaded."""
    with rt.store.session(readonly=True) as session:
        rows = session.execute(select(Service.version_id, Service.version, Service.traffic,
                                      Service.pending_traffic).where(
            Service.status.in_(status.ACTIVE))).all()
    return set().union(*(traffic.served_ids(row) for row in rows))


def unused(rt: Runtime, version_ids: set[int], in_use: set[int] | None = None) -> set[int]:
    """Those of `version_ids` no active service uses (`in_use`: versions_in_use, when the
    caller has read it already for many calls)."""
    return version_ids - (versions_in_use(rt) if in_use is None else in_use)


def unload_unused(rt: Runtime, version_ids: set[int], in_use: set[int] | None = None) -> None:
    """Tell every worker to drop those of `version_ids` no active service uses."""
    for version_id in unused(rt, version_ids, in_use):
        rt.bus.unload(version_id)


def drop_unused(rt: Runtime, version_ids: set[int], drop: Callable[[int], None] | None) -> None:
    """Drop from this worker (`drop(version_id)`) those of `version_ids` it loaded for a deploy
    or a change that will not happen, unless an active service uses them."""
    if drop is not None:
        for version_id in unused(rt, version_ids):
            drop(version_id)


# ---- auto stop ----------------------------------------------------------------------------


def arming(rt: Runtime, hours: int, enabled: bool) -> dict[str, Any]:
    """The fields that arm (or disarm) an auto stop counted from now."""
    if not enabled:
        return {"stop_at": None, "stop_token": None}
    stop_at = utcnow() + timedelta(seconds=hours * rt.hour_seconds)
    return {"stop_at": stop_at, "stop_token": uuid.uuid4().hex}


def arm(rt: Runtime, service_id: str) -> None:
    """Arm a Running service's auto stop from now and send the countdown."""
    service = get_service(rt, service_id)
    fields = arming(rt, service.auto_stop_hours, service.auto_stop_enabled)
    with rt.store.session() as session:
        row = session.get(Service, service_id)
        if row is None or row.status != status.RUNNING:
            return
        row.stop_at, row.stop_token = fields["stop_at"], fields["stop_token"]
    send_countdown(rt, service_id, fields)


def send_countdown(rt: Runtime, service_id: str, fields: dict[str, Any]) -> None:
    if fields.get("stop_token"):
        rt.bus.countdown(service_id, fields["stop_token"], fields["stop_at"])


def auto_stop(rt: Runtime, service_id: str, token: str) -> bool:
    """The countdown fired: stop only if this arming is still the current one."""
    with rt.store.session(readonly=True) as session:
        row = session.get(Service, service_id)
    if row is None or row.stop_token != token or row.status != status.RUNNING:
        return False
    return stop(rt, service_id, reason="auto_stop", billing_until=row.stop_at)


def sweep(rt: Runtime) -> list[str]:
    """Stop every Running service past its stop_at (countdowns lost to crashes or flushes)."""
    now = utcnow()
    with rt.store.session(readonly=True) as session:
        due = session.execute(
            select(Service.id, Service.stop_token).where(
                Service.status == status.RUNNING, Service.stop_at.is_not(None),
                Service.stop_at <= now)
        ).all()
    return [sid for sid, token in due if token and auto_stop(rt, sid, token)]


def recover(rt: Runtime) -> list[str]:
    """After a restart, send every service that should be up back to a worker."""
    with rt.store.session(readonly=True) as session:
        rows = session.execute(
            select(Service.id, Service.status).where(Service.status.in_(
                [status.RUNNING, status.DEPLOYING, status.STOPPING]))
        ).all()
    redeployed = []
    for sid, current in rows:
        service = get_service(rt, sid)
        if current == status.RUNNING and service.stop_at and service.stop_at <= utcnow():
            auto_stop(rt, sid, service.stop_token or "")  # it came due while we were down
            continue
        try:
            if current == status.STOPPING:
                status.transition(rt.store, sid, status.STOPPING, status.STOPPED, reason="restart")
                continue
            if current == status.RUNNING:
                status.transition(rt.store, sid, status.RUNNING, status.DEPLOYING, reason="restart",
                                  **traffic.promoted(service))
        except StaleTransition:
            continue
        rt.bus.deploy(sid, service.flavor)
        redeployed.append(sid)
    return redeployed


# ---- worker side --------------------------------------------------------------------------


def complete_deploy(rt: Runtime, service_id: str, load: Any, drop: Any = None) -> str:
    """Load the model (`load(version)` warms it up), then Deploying → Running and arm auto stop.

    A stop that arrived meanwhile wins the compare-and-set, and the model loaded for nothing is
    dropped again (`drop(version_id)`) unless another service uses it; a model that cannot load
    leaves the service Failed with the reason. Returns the status the service ends in.
    """
    with rt.store.session(readonly=True) as session:
        service = session.get(Service, service_id)
        version = session.get(ModelVersion, service.version_id) if service else None
    if service is None or version is None or service.status != status.DEPLOYING:
        return service.status if service else "missing"
    try:
        service = _load_all(rt, service, version, load)
    except Exception as exc:  # any failure to load is the user's to read, not a crash
        log.warning("deploy of service %s (version %s) failed", service_id, version.id,
                    exc_info=exc)  # the whole story here; the service shows what a caller may read
        message = for_caller(exc, "loading the model").message
        try:
            status.transition(rt.store, service_id, status.DEPLOYING, status.FAILED,
                              reason="deploy_failed", error=message)
        except StaleTransition:
            pass
        return status.FAILED
    # `service` is as read after the last load: auto stop may have changed meanwhile.
    # A service redeployed after a restart keeps the auto stop it was armed with.
    keep = service.stop_token is not None and service.stop_at is not None
    fields = {} if keep else arming(rt, service.auto_stop_hours, service.auto_stop_enabled)
    try:
        status.transition(rt.store, service_id, status.DEPLOYING, status.RUNNING,
                          reason="deployed", error=None, **fields)
    except StaleTransition:  # stopped while loading: its unload came before the models did
        drop_unused(rt, traffic.served_ids(service) | {version.id}, drop)
        return get_service(rt, service_id).status
    send_countdown(rt, service_id, fields or {"stop_token": service.stop_token,
                                              "stop_at": service.stop_at})
    _rearm_if_changed(rt, service_id, service)
    return status.RUNNING


def _load_all(rt: Runtime, service: Service, version: ModelVersion, load: Any) -> Service:
    """Load every version the service serves, its primary last (its steps end the deploy's
    progress); a change of versions that landed while loading is loaded too. Returns the row as
    read after the last load."""
    done: set[int] = set()
    while todo := traffic.served_ids(service) - done:
        primary = [service.version_id] if service.version_id in todo else []
        for version_id in sorted(todo - set(primary)) + primary:
            if version_id == version.id:
                load(version)
            else:
                with rt.store.session(readonly=True) as session:
                    other = session.get(ModelVersion, version_id)
                if other is None:
                    raise NotFound(f"a version of this service (id {version_id}) was deleted")
                load(other)
            done.add(version_id)
        service = get_service(rt, service.id)  # a change may have landed while we loaded
    return service


def _rearm_if_changed(rt: Runtime, service_id: str, armed_with: Service) -> None:
    """An auto-stop change that landed between our read and Running saw Deploying and left the
    arming to us: arm again with what is stored now."""
    now = get_service(rt, service_id)
    if now.status == status.RUNNING and (now.auto_stop_enabled, now.auto_stop_hours) != (
            armed_with.auto_stop_enabled, armed_with.auto_stop_hours):
        arm(rt, service_id)
