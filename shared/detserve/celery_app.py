"""The one Celery app factory every service builds its app from."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from detserve.config import Settings
from detserve.tasknames import QUEUES


def make_celery(settings: Settings, name: str = "detserve") -> Celery:
    """A Celery app on the settings' Redis: JSON only (never pickle), late acks, queues cpu/gpu/scheduler.

    Images do not travel inside messages: they wait in Redis under a short-lived key (images.py).
    """
    app = Celery(name, broker=settings.redis_url, backend=settings.redis_url, set_as_current=False)
    # A countdown task is held unacknowledged until its ETA; on Redis it is delivered again once
    # the visibility timeout passes. Keep the timeout above the longest auto stop (24 h) so that
    # does not happen in normal running; the token check makes any duplicate harmless anyway.
    visibility = max(3600.0, 25 * settings.autostop_hour_seconds)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue="cpu",
        task_routes={"scheduler.*": {"queue": "scheduler"}},
        result_expires=settings.result_ttl,
        result_extended=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": visibility},
        result_backend_transport_options={"visibility_timeout": visibility},
        # Task events cost a publish each; Flower switches them on (enable_events) while it runs.
        worker_send_task_events=False,
        enable_utc=True,
        timezone="UTC",
        worker_hijack_root_logger=False,
    )
    return app
