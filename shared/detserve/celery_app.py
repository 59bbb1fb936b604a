"""The one Celery app factory every service builds its app from."""

from __future__ import annotations

import redis
from celery import Celery
from kombu import Queue
from redis.backoff import NoBackoff
from redis.retry import Retry

from detserve.config import Settings
from detserve.tasknames import QUEUES

# One Redis command on a request path: a hung Redis (SIGSTOP, a partition) fails it with a 503
# within this many seconds instead of holding the caller. Kept above kombu's 1 s BRPOP poll.
REDIS_TIMEOUT = 3.0
CONNECT_TIMEOUT = 2.0


def redis_client(url: str, timeout: float = REDIS_TIMEOUT) -> redis.Redis:
    """A Redis client whose every call is bounded; a connection that died with a restarted Redis
    is retried once on a fresh one (a hung Redis is not: that would double the wait)."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=min(timeout, CONNECT_TIMEOUT),
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        health_check_interval=30)


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
        broker_connection_max_retries=None,  # a worker outlives any broker outage, however long
        broker_transport_options={"visibility_timeout": visibility,
                                  "socket_timeout": REDIS_TIMEOUT,
                                  "socket_connect_timeout": CONNECT_TIMEOUT},
        result_backend_transport_options={"visibility_timeout": visibility},
        redis_socket_timeout=REDIS_TIMEOUT,
        redis_socket_connect_timeout=CONNECT_TIMEOUT,
        # A publish to a Redis that is down or hung gives up within a few seconds (the API
        # answers 503) instead of retrying for as long as kombu's defaults allow.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0.5,
                                   "interval_step": 0.5, "interval_max": 1.0},
        # Task events cost a publish each; Flower switches them on (enable_events) while it runs.
        worker_send_task_events=False,
        enable_utc=True,
        timezone="UTC",
        worker_hijack_root_logger=False,
    )
    return app
