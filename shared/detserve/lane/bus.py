"""The messages the service layer sends, over Celery by task name (never by import)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Protocol

import redis
from celery import Celery
from celery.result import AsyncResult

from detserve import tasknames as names
from detserve.service import progress

UNLOAD_CHANNEL = "detserve:unload"


class Bus(Protocol):
    def deploy(self, service_id: str, flavor: str) -> None: ...
    def countdown(self, service_id: str, token: str, eta: datetime) -> None: ...
    def revoke(self, token: str) -> None: ...
    def unload(self, version_id: int) -> None: ...
    def switch(self, service_id: str, flavor: str, token: str) -> None: ...


class CeleryBus:
    """Sends tasks on the right queue; unload is a Redis broadcast every worker process hears."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._redis: redis.Redis | None = None

    def deploy(self, service_id: str, flavor: str) -> None:
        # the deploy's progress starts before it is sent, so a fast worker's steps come after it
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.app.conf.broker_url)
        progress.DeployProgress(self._redis, service_id).queued()
        self.app.send_task(names.DEPLOY, args=[service_id], queue=flavor)

    def switch(self, service_id: str, flavor: str, token: str) -> None:
        """A worker of the flavor loads the versions of the change `token`, then switches."""
        self.app.send_task(names.SWITCH, args=[service_id, token], queue=flavor)

    def countdown(self, service_id: str, token: str, eta: datetime) -> None:
        # The arming token doubles as the task id, so re-arming can revoke it by name.
        self.app.send_task(names.STOP, args=[service_id, token], eta=eta, task_id=token,
                           queue="scheduler")

    def revoke(self, token: str) -> None:
        AsyncResult(token, app=self.app).revoke()

    def unload(self, version_id: int) -> None:
        with redis.Redis.from_url(self.app.conf.broker_url, socket_timeout=5,
                                  socket_connect_timeout=5) as client:
            client.publish(UNLOAD_CHANNEL, json.dumps({"version_id": version_id}))
