"""Service states and the one function that changes them (compare-and-set + event row)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from detserve.errors import StaleTransition
from detserve.store import Service, ServiceEvent, Store, utcnow

log = logging.getLogger("detserve.service.status")

DEPLOYING = "Deploying"
RUNNING = "Running"
STOPPING = "Stopping"
STOPPED = "Stopped"
FAILED = "Failed"

ACTIVE = frozenset({DEPLOYING, RUNNING})
STARTABLE = frozenset({STOPPED, FAILED})
STOPPABLE = frozenset({DEPLOYING, RUNNING, FAILED})

# Version statuses (training outcome as the console shows it).
SUCCESSFUL = "Successful"
TRAINING = "Training"
VERSION_FAILED = "Failed"
VERSION_STATUSES = (SUCCESSFUL, TRAINING, VERSION_FAILED)


def transition(
    store: Store,
    service_id: str,
    expected: str | Iterable[str],
    new: str,
    *,
    reason: str,
    billing_until: datetime | None = None,
    **fields: Any,
) -> str:
    """Move a service from one of `expected` to `new`, write the event, return the old status.

    The UPDATE matches the status read just before it, so of two racing callers exactly one
    wins; the other gets StaleTransition and nothing is written for it. Running time is
    accrued here, the one place that sees every entry to and exit from Running.

    Raises:
        StaleTransition: the service is not in an expected state (or is gone).
    """
    allowed = {expected} if isinstance(expected, str) else set(expected)
    now = utcnow()
    with store.session() as session:
        row = session.execute(
            select(Service.status, Service.running_since, Service.running_seconds).where(
                Service.id == service_id
            )
        ).first()
        if row is None or row.status not in allowed:
            found = "missing" if row is None else row.status
            raise StaleTransition(
                f"service {service_id} is {found}, not {' or '.join(sorted(allowed))}"
            )
        values = dict(fields, status=new, updated_at=now)
        if row.status == RUNNING and new != RUNNING and row.running_since is not None:
            end = min(now, billing_until) if billing_until else now
            values["running_seconds"] = row.running_seconds + max(
                0.0, (end - row.running_since).total_seconds()
            )
            values["running_since"] = None
        if new == RUNNING:
            values["running_since"] = now
        result = session.execute(
            update(Service)
            .where(Service.id == service_id, Service.status == row.status)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise StaleTransition(f"service {service_id} changed while moving to {new}")
        session.add(
            ServiceEvent(
                service_id=service_id, at=now, from_status=row.status, to_status=new, reason=reason
            )
        )
    level = logging.WARNING if new == FAILED else logging.INFO
    log.log(level, "%s -> %s (%s)%s", row.status, new, reason,
            f": {fields['error']}" if fields.get("error") else "", extra={"service_id": service_id})
    return str(row.status)
