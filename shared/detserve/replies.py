"""Direct replies for synchronous predictions: the worker pushes the answer onto a short-lived
Redis list that the waiting API thread BLPOPs (synclane.LaneClient.call). Typed errors (code,
status) instead of re-raised exception classes."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis

from detserve.errors import DetserveError

KEEP_SECONDS = 120  # a reply nobody collects (the caller timed out) vanishes


def new_key() -> str:
    return f"detserve:reply:{uuid.uuid4().hex}"


def failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, DetserveError):
        return {"error": {"code": exc.code, "message": exc.message}, "status": exc.status_code}
    return {"error": {"code": "internal_error",
                      "message": f"the worker failed: {type(exc).__name__}: {exc}"}, "status": 500}


def add(pipe: Any, key: str, payload: dict[str, Any]) -> None:
    """Queue the reply's commands on a pipeline (the worker sends them with its next BRPOP)."""
    pipe.rpush(key, json.dumps(payload))
    pipe.expire(key, KEEP_SECONDS)


def send(client: redis.Redis, key: str, payload: dict[str, Any]) -> None:
    pipe = client.pipeline(transaction=False)
    add(pipe, key, payload)
    pipe.execute()


class RemoteError(DetserveError):
    """An error the worker reported, with its own code and status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.status_code = code, status
