"""What travels on the sync lane: a Frame from the API to a worker, an Answer back.

A frame is a JSON header, a newline, and the image's raw bytes. An answer is a JSON head (the
status, and the error or the worker-side inference time), a newline, and the result's JSON as the
worker wrote it: the API passes it on without parsing and re-serialising it. json.dumps escapes
control characters, so the first newline always ends the header.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from detserve.errors import DetserveError

FORMAT = 3
LANE_KEY = "detserve:lane:{flavor}"  # frames; any worker of the flavor takes them
LOCAL_LANE_KEY = "detserve:lane:{flavor}:{shm_id}"  # frames whose image waits in that directory
REPLY_KEY = "detserve:reply:{id}"  # one per call: the caller BLPOPs it


@dataclass(frozen=True)
class Frame:
    version_id: int
    service_id: str
    reply_to: str  # the Redis list the answer goes on
    deadline: float  # epoch seconds: after this nobody waits for the answer
    image: bytes
    request_id: str = ""  # for the worker's log lines
    port: str = ""  # same host: the image waits in that port's slot, the answer goes there
    image_size: int = 0  # with a port: how many bytes of its slot are the image
    options: dict[str, Any] = field(default_factory=dict)  # the request's answer options


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""  # the result's JSON (status 200)
    inference_ms: float | None = None
    error: dict[str, str] | None = None  # {"code": ..., "message": ...} (status >= 400)


class RemoteError(DetserveError):
    """An error the worker reported, with its own code and status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.status_code = code, status


def new_reply_key() -> str:
    return REPLY_KEY.format(id=uuid.uuid4().hex)


def encode_frame(frame: Frame) -> bytes:
    header = {"format": FORMAT, "version_id": frame.version_id, "service_id": frame.service_id,
              "reply_to": frame.reply_to, "deadline": frame.deadline,
              "request_id": frame.request_id, "port": frame.port,
              "image_size": frame.image_size, "options": frame.options}
    return json.dumps(header).encode() + b"\n" + frame.image


def decode_frame(data: bytes) -> Frame:
    """Raises ValueError for anything that is not a frame of this format."""
    head, sep, image = data.partition(b"\n")
    if not sep:
        raise ValueError("no header")
    try:
        header = json.loads(head)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"unknown frame format {header!r:.80}")
        return Frame(int(header["version_id"]), str(header["service_id"]),
                     str(header["reply_to"]), float(header["deadline"]), image,
                     str(header.get("request_id") or ""), str(header.get("port") or ""),
                     int(header.get("image_size") or 0), dict(header.get("options") or {}))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed frame header: {exc}") from exc


def success(result: dict[str, Any]) -> bytes:
    head = {"status": 200, "inference_ms": result.get("inference_ms")}
    return json.dumps(head).encode() + b"\n" + json.dumps(result).encode()


def failure(exc: BaseException) -> bytes:
    """The answer that reports `exc`: a DetserveError as itself; anything else as the server's
    fault (503), with a stable message: the details stay in the worker's log."""
    if isinstance(exc, DetserveError) and exc.status_code < 500:
        head: dict[str, Any] = {"status": exc.status_code,
                                "error": {"code": exc.code, "message": exc.message}}
    else:
        head = {"status": 503, "error": {
            "code": "worker_error", "message": "the worker could not run this prediction (the "
            "details are in its log); try again, and report it if it persists"}}
    return json.dumps(head).encode() + b"\n"


def decode_answer(data: bytes) -> Answer:
    """Raises ValueError for anything that is not an answer."""
    head_bytes, sep, body = data.partition(b"\n")
    head = json.loads(head_bytes)
    if not sep or not isinstance(head, dict) or not isinstance(head.get("status"), int):
        raise ValueError(f"not an answer: {data[:80]!r}")
    return Answer(head["status"], body, head.get("inference_ms"), head.get("error"))
