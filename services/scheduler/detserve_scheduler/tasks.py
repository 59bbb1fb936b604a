"""scheduler.stop (a countdown, token-checked, idempotent) and scheduler.sweep (the safety net)."""

from __future__ import annotations

import logging
import os
from typing import Any

import redis
from celery import Celery

from detserve import tasknames as names
from detserve.config import Settings
from detserve.lane.bus import CeleryBus
from detserve.service import deployments, idle
from detserve.service.artifacts import ArtifactStore
from detserve.store import Store

log = logging.getLogger("detserve.scheduler")


def register_scheduler_tasks(app: Celery, settings: Settings) -> None:
    """Register the scheduler's tasks on `app`."""
    runtimes: dict[int, deployments.Runtime] = {}
    clients: dict[int, redis.Redis] = {}

    def runtime() -> deployments.Runtime:
        pid = os.getpid()  # one store per process, made after fork
        if pid not in runtimes:
            runtimes[pid] = deployments.Runtime(
                Store(settings.database_url), ArtifactStore(settings.artifacts_dir),
                CeleryBus(app), settings.autostop_hour_seconds)
        return runtimes[pid]

    def client() -> redis.Redis:
        pid = os.getpid()
        if pid not in clients:
            clients[pid] = redis.Redis.from_url(settings.redis_url)
        return clients[pid]

    @app.task(name=names.STOP, ignore_result=True)
    def stop(service_id: str, token: str) -> None:
        """An auto stop came due; a stale or repeated delivery finds a voided token and returns."""
        if deployments.auto_stop(runtime(), service_id, token):
            log.info("auto stopped service %s", service_id, extra={"service_id": service_id})

    @app.task(name=names.SWEEP, ignore_result=True)
    def sweep(**_: Any) -> None:
        """Stop every Running service past its stop_at."""
        stopped = deployments.sweep(runtime())
        if stopped:
            log.info("sweep auto stopped %s", ", ".join(stopped))
        try:
            idle.sweep(runtime(), client())  # idle stops and stopping-soon warnings
        except redis.RedisError as exc:
            log.warning("idle sweep skipped: Redis unavailable (%s)", exc)
        failed = deployments.fail_stuck_deploys(runtime(), settings.deploy_timeout)
        if failed:
            log.warning("deploys that never finished, now Failed: %s", ", ".join(failed))
