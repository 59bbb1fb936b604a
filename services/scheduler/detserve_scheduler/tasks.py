"""scheduler.stop (a countdown, token-checked, idempotent) and scheduler.sweep (the safety net)."""

from __future__ import annotations

import logging
import os
from typing import Any

import redis
from celery import Celery

from detserve import tasknames as names
from detserve.celery_app import redis_client
from detserve.config import Settings
from detserve.lane.bus import CeleryBus
from detserve.service import deployments, idle, repairs, rollout
from detserve.service.artifacts import ArtifactStore
from detserve.store import Store
from detserve_scheduler.redeliver import redeliver_orphans, resend_lost

log = logging.getLogger("detserve.scheduler")

STOP_GRACE_SECONDS = 30.0  # a stop's two steps take well under a second when nothing fails


def register_scheduler_tasks(app: Celery, settings: Settings) -> None:
    """Register the scheduler's tasks on `app`."""
    runtimes: dict[int, tuple[deployments.Runtime, redis.Redis]] = {}

    def runtime() -> deployments.Runtime:
        return per_process()[0]

    def per_process() -> tuple[deployments.Runtime, redis.Redis]:
        pid = os.getpid()  # one store per process, made after fork
        if pid not in runtimes:
            runtimes[pid] = (deployments.Runtime(
                Store(settings.database_url), ArtifactStore(settings.artifacts_dir),
                CeleryBus(app), settings.autostop_hour_seconds), redis_client(settings.redis_url))
        return runtimes[pid]

    @app.task(name=names.STOP, ignore_result=True)
    def stop(service_id: str, token: str) -> None:
        """An auto stop came due; a stale or repeated delivery finds a voided token and returns."""
        if deployments.auto_stop(runtime(), service_id, token):
            log.info("auto stopped service %s", service_id, extra={"service_id": service_id})

    @app.task(name=names.SWEEP, ignore_result=True)
    def sweep(**_: Any) -> None:
        """Stop every Running service past its stop_at; repair what crashes left half done."""
        rt, client = per_process()
        stopped = deployments.sweep(rt)
        if stopped:
            log.info("sweep auto stopped %s", ", ".join(stopped))
        try:
            idle.sweep(rt, client)  # idle stops and stopping-soon warnings
        except redis.RedisError as exc:
            log.warning("idle sweep skipped: Redis unavailable (%s)", exc)
        finished = repairs.finish_stuck_stops(rt, STOP_GRACE_SECONDS)
        if finished:
            log.warning("stops left half done, now Stopped: %s", ", ".join(finished))
        resent = redeliver_orphans(app, client, 3 * settings.heartbeat_seconds, settings.result_ttl)
        resent += resend_lost(app, client, rt)
        if resent:
            log.warning("tasks whose worker died, sent again: %s", ", ".join(resent))
        failed = repairs.fail_stuck_deploys(rt, settings.deploy_timeout)
        if failed:
            log.warning("deploys that never finished, now Failed: %s", ", ".join(failed))
        lost = rollout.fail_stuck_changes(rt, settings.deploy_timeout)
        if lost:
            log.warning("changes of versions that never loaded, now failed: %s", ", ".join(lost))
