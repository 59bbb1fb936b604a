"""What the scheduler's sweep repairs: deploys that never finish, stops left half done."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from detserve.errors import StaleTransition
from detserve.service import status, traffic
from detserve.service.deployments import Runtime, unload_unused, versions_in_use
from detserve.store import Service, utcnow


def fail_stuck_deploys(rt: Runtime, timeout: float) -> list[str]:
    """Deploying for longer than `timeout`: its deploy was lost (a worker died mid-load, the flavor's
    workers went away). Fail it with a reason, so it never hangs in Deploying; start retries."""
    cutoff = utcnow() - timedelta(seconds=timeout)
    with rt.store.session(readonly=True) as session:
        stuck = session.scalars(select(Service.id).where(
            Service.status == status.DEPLOYING, Service.updated_at < cutoff)).all()
    failed = []
    for sid in stuck:
        try:
            status.transition(
                rt.store, sid, status.DEPLOYING, status.FAILED, reason="deploy_timeout",
                error=f"no worker finished deploying this service within {timeout:g} s (a worker "
                      "may have stopped, or none of its flavor is running); start it again")
            failed.append(sid)
        except StaleTransition:
            continue  # it finished meanwhile
    return failed


def finish_stuck_stops(rt: Runtime, older_than: float) -> list[str]:
    """Finish stops left half done (Stopping for over `older_than` s: the stopping process died,
    or Redis failed between the two steps), wherever detserve runs: the scheduler's sweep."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    with rt.store.session(readonly=True) as session:
        stuck = session.execute(select(Service.id, Service.version_id, Service.version,
                                       Service.traffic, Service.pending_traffic).where(
            Service.status == status.STOPPING, Service.updated_at < cutoff)).all()
    finished = []
    in_use = versions_in_use(rt)  # stopping rows are not active: the same for every row
    for row in stuck:
        sid = row.id
        unload_unused(rt, traffic.served_ids(row), in_use)  # the step that may not have happened
        try:
            status.transition(rt.store, sid, status.STOPPING, status.STOPPED, reason="stop_repaired")
            finished.append(sid)
        except StaleTransition:
            continue
    return finished
