"""Answers to synchronous predictions, from the worker to the waiting API thread (synclane.py).

An answer is a small JSON head (the status, and the error or the worker-side inference time), a
newline, and the result's JSON exactly as the worker wrote it: the API passes the result on to
its caller without parsing and re-serialising it. It travels on a short-lived Redis list that the
API thread BLPOPs, or as a datagram to the thread's own socket (handoff.py) when the two share
memory. Typed errors (code, status) instead of re-raised exception classes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from detserve.errors import DetserveError

KEEP_SECONDS = 120  # an answer nobody collects (the caller timed out) vanishes


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""  # the result's JSON (status 200)
    inference_ms: float | None = None
    error: dict[str, str] | None = None  # {"code": ..., "message": ...} (status >= 400)


def new_key() -> str:
    return f"detserve:reply:{uuid.uuid4().hex}"


def encode(head: dict[str, Any], body: bytes = b"") -> bytes:
    return json.dumps(head).encode() + b"\n" + body


def success(result: dict[str, Any]) -> bytes:
    return encode({"status": 200, "inference_ms": result.get("inference_ms")},
                  json.dumps(result).encode())


def failure(exc: BaseException) -> dict[str, Any]:
    """The head of the answer that reports `exc` (encode() it)."""
    if isinstance(exc, DetserveError):
        return {"status": exc.status_code, "error": {"code": exc.code, "message": exc.message}}
    return {"status": 500, "error": {"code": "internal_error",
                                     "message": f"the worker failed: {type(exc).__name__}: {exc}"}}


def decode(data: bytes) -> Answer:
    """Raises ValueError for anything that is not an answer."""
    head_bytes, sep, body = data.partition(b"\n")
    head = json.loads(head_bytes)
    if not sep or not isinstance(head, dict) or not isinstance(head.get("status"), int):
        raise ValueError(f"not an answer: {data[:80]!r}")
    return Answer(head["status"], body, head.get("inference_ms"), head.get("error"))


def add(pipe: Any, key: str, answer: bytes) -> None:
    """Queue the answer's commands on a pipeline (the worker sends them with its next BRPOP)."""
    pipe.rpush(key, answer)
    pipe.expire(key, KEEP_SECONDS)


def send(client: redis.Redis, key: str, answer: bytes) -> None:
    pipe = client.pipeline(transaction=False)
    add(pipe, key, answer)
    pipe.execute()


class RemoteError(DetserveError):
    """An error the worker reported, with its own code and status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.status_code = code, status
