"""Send again what died with its worker: deploys and async predictions a worker claimed
(monitoring/inflight.py) and whose heartbeat has stopped.

On a Redis broker the message of a task whose worker died comes back only after the visibility
timeout (over a day here, so that auto-stop countdowns are not delivered twice): meanwhile its
service would sit in Deploying and its prediction in STARTED. Deploys are idempotent; an async
prediction is sent again under its own task id with its image (still in Redis until the task
ends), a few times at most, then ends FAILURE with the reason.
"""

from __future__ import annotations

import json

import redis
from celery import Celery

from detserve import tasknames as names
from detserve.errors import Unavailable
from detserve.monitoring import heartbeats, inflight
from detserve.processing import headers as images
from detserve.service import deployments
from detserve.service.deployments import Runtime

MAX_REDELIVERIES = 2  # an image that kills its worker every time must not kill them all


def redeliver_orphans(app: Celery, client: redis.Redis, within: float, keep_seconds: int) -> list[str]:
    """Re-send every claimed task whose worker has not beaten for `within` s; returns their ids."""
    alive: dict[str, set[str]] = {}
    sent = []
    for record in inflight.running(client):
        if record.queue not in alive:
            alive[record.queue] = set(heartbeats.alive(client, record.queue, within))
        if record.worker in alive[record.queue] or not inflight.release(client, record.task_id):
            continue  # its worker lives, or another sweep took it over first
        sent.append(record.task_id)
        if record.task in (names.DEPLOY, names.SWITCH):  # both idempotent
            app.send_task(record.task, args=record.args, queue=record.queue)
        else:
            _predict_again(app, client, record, keep_seconds)
    return sent


def _predict_again(app: Celery, client: redis.Redis, record: inflight.Record,
                   keep_seconds: int) -> None:
    image_key = str(record.args[1])
    if inflight.attempt(client, record.task_id, keep_seconds) > MAX_REDELIVERIES:
        why = (f"the worker running this prediction stopped {MAX_REDELIVERIES + 1} times; "
               "check the image, then send it again")
    elif not client.exists(image_key):
        why = "the worker running this prediction stopped and its image expired; send it again"
    else:
        app.send_task(names.PREDICT, args=record.args, task_id=record.task_id, queue=record.queue)
        return
    app.backend.mark_as_failure(record.task_id, Unavailable(why))


# Where the API keeps an accepted async prediction's service (detserve_api/auth.py reads it); its
# image stays until its task ends, listed in images.INDEX (processing/headers.py).
TASK_SERVICE = "detserve:task:{task_id}"
LOST_AFTER = 30.0  # an accepted task neither queued nor claimed nor started for this long is lost


def resend_lost(app: Celery, client: redis.Redis, rt: Runtime) -> list[str]:
    """Send again accepted async predictions still PENDING with their image waiting for over
    LOST_AFTER s and no message queued: a worker popped it and died, or Redis died, before the
    worker recorded it (kombu's Redis transport keeps a message nowhere in that moment), or a
    worker lost Redis mid-task and could record nothing. A task sent twice is answered twice,
    alike."""
    lost, queued = [], None
    # only images kept over LOST_AFTER s ago by this host's clock: a few, not the whole keyspace
    for key in images.waiting_for(client, LOST_AFTER):
        task_id = key.rsplit(":", 1)[-1]
        ttl = client.ttl(key)
        if ttl == -2:  # expired, or its task ended on a worker that deletes only the image
            images.forget(client, key)
            continue
        if images.KEEP_SECONDS - ttl < LOST_AFTER:  # Redis' clock has the last word on age
            continue
        owner = _text(client.get(TASK_SERVICE.format(task_id=task_id)))
        service = deployments.find_service(rt, owner) if owner else None
        if service is None:
            continue
        if queued is None:  # read once per sweep, and only when a task looks lost
            queued = "".join(_text(m) or "" for m in client.lrange(service.flavor, 0, -1))
        if task_id in queued or app.AsyncResult(task_id).state != "PENDING":
            continue
        # A claim left by a live worker that lost Redis mid-task (its release failed too) holds
        # the task's own arguments (answer options included): send those again. Without one the
        # options are unknown, and a guess could answer wrongly: end it with the reason.
        claim = client.hget(inflight.KEY, task_id)
        inflight.release(client, task_id)
        if claim is None:
            app.backend.mark_as_failure(task_id, Unavailable(
                "the prediction was lost in transit (the broker restarted); send it again"))
        else:
            app.send_task(names.PREDICT, args=json.loads(claim)["args"], task_id=task_id,
                          queue=service.flavor)
        lost.append(task_id)
    return lost


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
