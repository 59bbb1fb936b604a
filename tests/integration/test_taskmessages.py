"""Our one-round-trip prediction message is the message Celery's send_task writes."""

from __future__ import annotations

import base64
import json

import redis

from detserve import tasknames as names
from detserve.lane.taskmessages import publish_prediction

VOLATILE = {"id", "root_id", "origin", "argsrepr", "correlation_id", "reply_to",
            "delivery_tag"}


def _strip(message: dict) -> dict:
    body = json.loads(base64.b64decode(message.pop("body")))
    message["headers"] = {k: v for k, v in message["headers"].items() if k not in VOLATILE}
    message["properties"] = {k: v for k, v in message["properties"].items() if k not in VOLATILE}
    body[0][1] = "image-key"
    return {**message, "body": body}


def test_same_message_as_send_task(stack):
    r = redis.Redis.from_url(stack.settings.redis_url)
    queue = "format-check"
    stack.app.extensions["celery"].send_task(names.PREDICT, args=[7, "image-key"], queue=queue)
    task_id = publish_prediction(r, queue, 7, b"\xff\xd8\xff", 60)
    ours, theirs = (json.loads(m) for m in r.lrange(queue, 0, -1))  # LPUSH: newest first
    r.delete(queue)
    assert ours["headers"]["id"] == task_id
    assert r.get(f"detserve:image:{task_id}") == b"\xff\xd8\xff"
    a, b = _strip(ours), _strip(theirs)
    assert {k: v for k, v in a["headers"].items() if b["headers"].get(k) != v} == {}
    assert a == b
