"""Scheduler: Celery beat + the "scheduler" queue. Auto stop countdowns and the sweep.

Run with `detserve scheduler` (celery -A detserve_scheduler worker -B -Q scheduler).
"""

from __future__ import annotations

from celery import Celery

from detserve import tasknames as names
from detserve.celery_app import make_celery
from detserve.config import Settings, keep_files_private
from detserve.monitoring import logs
from detserve.monitoring.heartbeats import connect_heartbeat
from detserve_scheduler.tasks import register_scheduler_tasks


def make_scheduler(settings: Settings) -> Celery:
    """The scheduler's Celery app: stop + sweep tasks, and beat sending the sweep."""
    app = make_celery(settings, "detserve-scheduler")
    register_scheduler_tasks(app, settings)
    connect_heartbeat(settings, "scheduler")
    logs.install(settings.redis_url, "scheduler")
    app.conf.beat_schedule = {
        "sweep": {"task": names.SWEEP, "schedule": settings.sweep_seconds,
                  "options": {"queue": "scheduler", "expires": settings.sweep_seconds * 2}},
    }
    app.conf.beat_schedule_filename = str(settings.data_dir / "celerybeat-schedule")
    return app


keep_files_private()
app = make_scheduler(Settings.from_env())
