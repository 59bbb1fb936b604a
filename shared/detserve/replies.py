"""Direct replies for synchronous predictions: the worker pushes the answer onto a short-lived
Redis list that the waiting API thread BLPOPs. One blocking round trip, safe across the API's
threads, and typed errors (code, status) instead of re-raised exception classes."""

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


def send(client: redis.Redis, key: str, payload: dict[str, Any]) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.rpush(key, json.dumps(payload))
    pipe.expire(key, KEEP_SECONDS)
    pipe.execute()


def wait(client: redis.Redis, key: str, timeout: float) -> dict[str, Any] | None:
    """The reply, or None when none came within `timeout` seconds."""
    item = client.blpop([key], timeout=timeout)
    return None if item is None else json.loads(item[1])


class RemoteError(DetserveError):
    """An error the worker reported, with its own code and status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.status_code = code, status
