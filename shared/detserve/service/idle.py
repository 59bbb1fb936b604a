"""Idle auto stop, the stopping-soon warning and Extend (the fixed countdown is deployments.py's).

A service with `auto_stop_idle_minutes` stops that long after its last prediction (or after it
came up, if none came since). The scheduler's sweep decides, so a scheduler that was killed
catches up on its next sweep; the stop is the one compare-and-set `deployments.stop`, so it
happens once. Ten minutes (in the service's hours, so a shrunk hour shrinks them too) before
either kind of stop the service is `stopping_soon`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import or_, select, update

from detserve.errors import Conflict, ServiceNotRunning, StaleTransition
from detserve.service import deployments, status
from detserve.service.deployments import Runtime
from detserve.store import Service, ServiceEvent, utcnow

log = logging.getLogger("detserve.service.idle")

LAST_KEY = "detserve:last_prediction"  # sorted set: service id -> epoch s of its last prediction
WARNED_KEY = "detserve:stopping_soon:{service_id}:{mark}"
WARN_MINUTES = 10


class AutoStopOff(Conflict):
    code = "auto_stop_disabled"


@dataclass(frozen=True)
class NextStop:
    at: datetime
    kind: str  # "auto_stop" (the fixed time) or "idle"


def minutes(rt_hour_seconds: float, n: float) -> timedelta:
    """`n` of the service's minutes (an hour may be shrunk for tests)."""
    return timedelta(seconds=n * rt_hour_seconds / 60)


def touch(pipe: Any, stamps: dict[str, float]) -> None:
    """Record predictions' times (service id -> epoch s); an older time never wins."""
    if stamps:
        pipe.zadd(LAST_KEY, stamps, gt=True)


def last_predictions(client: redis.Redis, ids: list[str]) -> dict[str, float]:
    if not ids:
        return {}
    scores = client.zmscore(LAST_KEY, ids)
    return {sid: float(s) for sid, s in zip(ids, scores, strict=True) if s is not None}


def idle_stop_at(service: Service, last: float | None, hour_seconds: float) -> datetime | None:
    """When a Running service stops if no prediction comes; None without an idle stop."""
    if not service.auto_stop_idle_minutes or service.status != status.RUNNING:
        return None
    since = service.running_since or service.updated_at
    if last is not None:
        since = max(since, datetime.fromtimestamp(last, since.tzinfo))
    return since + minutes(hour_seconds, service.auto_stop_idle_minutes)


def next_stop(service: Service, last: float | None, hour_seconds: float) -> NextStop | None:
    stops = [NextStop(at, kind) for at, kind in (
        (service.stop_at if service.status == status.RUNNING else None, "auto_stop"),
        (idle_stop_at(service, last, hour_seconds), "idle")) if at is not None]
    return min(stops, key=lambda s: s.at) if stops else None


def stopping_soon(stop: NextStop | None, hour_seconds: float, now: datetime | None = None) -> bool:
    return stop is not None and stop.at - (now or utcnow()) <= minutes(hour_seconds, WARN_MINUTES)


def view_fields(service: Service, last: float | None, hour_seconds: float) -> dict[str, Any]:
    """What the service JSON adds: the idle stop's time and whether a stop is near."""
    idle_at = idle_stop_at(service, last, hour_seconds)
    stop = next_stop(service, last, hour_seconds)
    return {"idle_stop_at": idle_at, "stopping_soon": stopping_soon(stop, hour_seconds),
            "stops_at": stop.at if stop else None}


def warning(service: Service, hour_seconds: float, now: datetime | None = None) -> str | None:
    """The Warning header of a prediction answered now, while a stop is near (the prediction
    itself restarts the idle clock)."""
    now = now or utcnow()
    stop = next_stop(service, now.timestamp(), hour_seconds)
    if not stopping_soon(stop, hour_seconds, now) or stop is None:
        return None
    at = stop.at.isoformat(timespec="seconds").replace("+00:00", "Z")
    return f'299 - "service stops at {at}"'


# ---- the scheduler's part --------------------------------------------------------------------


def sweep(rt: Runtime, client: redis.Redis) -> list[str]:
    """Stop services idle past their time; mark (once) those whose stop is near. Returns the
    ids stopped for idleness."""
    with rt.store.session(readonly=True) as session:
        rows = list(session.scalars(select(Service).where(
            Service.status == status.RUNNING,
            or_(Service.auto_stop_idle_minutes.is_not(None), Service.stop_at.is_not(None)))))
    lasts = last_predictions(client, [s.id for s in rows])
    now, stopped = utcnow(), []
    for service in rows:
        idle_at = idle_stop_at(service, lasts.get(service.id), rt.hour_seconds)
        if idle_at is not None and idle_at <= now:
            if deployments.stop(rt, service.id, reason="idle_stop", billing_until=idle_at):
                log.info("stopped after %s minutes without a prediction",
                         service.auto_stop_idle_minutes, extra={"service_id": service.id})
                stopped.append(service.id)
            continue
        stop = next_stop(service, lasts.get(service.id), rt.hour_seconds)
        if stopping_soon(stop, rt.hour_seconds, now) and stop is not None:
            _warn_once(rt, client, service, stop)
    return stopped


def _warn_once(rt: Runtime, client: redis.Redis, service: Service, stop: NextStop) -> None:
    # the fixed stop warns once per arming; the idle one at most once per warning window
    mark = service.stop_token if stop.kind == "auto_stop" else "idle"
    window = minutes(rt.hour_seconds, WARN_MINUTES).total_seconds()
    if not client.set(WARNED_KEY.format(service_id=service.id, mark=mark), "1", nx=True,
                      px=max(1000, int(window * 1000))):
        return
    with rt.store.session() as session:
        session.add(ServiceEvent(service_id=service.id, at=utcnow(), from_status=status.RUNNING,
                                 to_status=status.RUNNING, reason="stopping_soon"))
    at = stop.at.isoformat(timespec="seconds").replace("+00:00", "Z")
    what = "auto stop" if stop.kind == "auto_stop" else "idle stop"
    log.warning("stopping soon: %s at %s", what, at, extra={"service_id": service.id})


# ---- Extend ----------------------------------------------------------------------------------


def extend(rt: Runtime, service_id: str, hours: int) -> Service:
    """Push the fixed stop back by `hours` and re-arm: a new token and countdown, the old
    countdown finds its token voided and does nothing.

    Raises:
        ServiceNotRunning: only a Running service has a countdown to extend.
        AutoStopOff: the service has no fixed stop time.
        StaleTransition: the countdown fired or was re-armed meanwhile.
    """
    service = deployments.get_service(rt, service_id)
    if service.status != status.RUNNING:
        raise ServiceNotRunning(f"service {service_id} is {service.status}; only a Running "
                                "service's auto stop can be extended")
    if not service.stop_at or not service.stop_token:
        raise AutoStopOff(f"service {service_id} has no auto-stop time to extend; turn it on "
                          "with PATCH /v1/services/{id} {\"auto_stop\": {\"enabled\": true}}")
    now = utcnow()
    stop_at = service.stop_at + timedelta(seconds=hours * rt.hour_seconds)
    token = uuid.uuid4().hex
    with rt.store.session() as session:
        # the countdown fires at stop_at and reads the token: re-arming before then voids it
        done = session.execute(update(Service).where(
            Service.id == service_id, Service.status == status.RUNNING,
            Service.stop_token == service.stop_token, Service.stop_at > now,
        ).values(stop_at=stop_at, stop_token=token, updated_at=now)
         .execution_options(synchronize_session=False))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise StaleTransition(f"service {service_id}'s auto stop fired or changed meanwhile; "
                                  "read it again")
        session.add(ServiceEvent(service_id=service_id, at=now, from_status=status.RUNNING,
                                 to_status=status.RUNNING, reason="extended"))
    rt.bus.revoke(service.stop_token)
    deployments.send_countdown(rt, service_id, {"stop_token": token, "stop_at": stop_at})
    log.info("auto stop extended by %s h, to %s", hours,
             stop_at.isoformat(timespec="seconds"), extra={"service_id": service_id})
    return deployments.get_service(rt, service_id)
