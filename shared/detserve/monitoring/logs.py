"""Log lines about a service, from every component that handled it, kept per service in Redis.

A record concerns a service when it carries `service_id` (logging's `extra`) or is written while
`about(service_id)` is in effect; the request id comes the same way. ServiceLogHandler ships
those records, already structured, to one capped Redis stream per service; `read` returns them
for GET /v1/services/{id}/logs. Records about no service are left to the other handlers. The
one line per prediction (API and worker) goes through `access`, straight to the same queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import redis

SERVICE: ContextVar[str | None] = ContextVar("detserve_service_id", default=None)
REQUEST: ContextVar[str | None] = ContextVar("detserve_request_id", default=None)

KEY = "detserve:logs:{service_id}"
MAX_LINES = 5000  # per service; the oldest go first
KEEP_SECONDS = 24 * 3600  # a service nobody logs about for a day loses its lines
LOGGER = "detserve"  # every detserve module logs under it

Line = tuple[str, dict[str, str]]


@contextlib.contextmanager
def about(service_id: str | None, request_id: str | None = None) -> Iterator[None]:
    """Within this block, log records concern `service_id` (and `request_id`)."""
    s, r = SERVICE.set(service_id), REQUEST.set(request_id or REQUEST.get())
    try:
        yield
    finally:
        REQUEST.reset(r)
        SERVICE.reset(s)


class ServiceLogHandler(logging.Handler):
    """Ships records about a service to its stream from a background thread (a record only
    joins an in-memory queue: logging never waits on Redis)."""

    GATHER_SECONDS = 0.1

    def __init__(self, redis_url: str, component: str) -> None:
        super().__init__(logging.INFO)
        self.client = redis.Redis.from_url(redis_url)
        self.component = component
        self._queue: queue.SimpleQueue[Line] = queue.SimpleQueue()
        self._pid = -1
        self._process = ""  # host/pid, named once per process (gethostname is a system call)
        self._start_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        service_id = getattr(record, "service_id", None) or SERVICE.get()
        if not service_id:
            return
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.put(str(service_id), record.levelname, message, record.created,
                 getattr(record, "request_id", None) or REQUEST.get())

    def put(self, service_id: str, level: str, message: str, created: float,
            request_id: str | None) -> None:
        """Queue one line for the service's stream."""
        if self._pid != os.getpid():
            self._start()
        self._queue.put((service_id, {
            "time": f"{created:.6f}", "component": self.component, "level": level,
            "message": message[:4000], "request_id": request_id or "", "process": self._process}))

    def _start(self) -> None:
        with self._start_lock:
            if self._pid != os.getpid():  # first record in this process (after a fork too)
                threading.Thread(target=self._run, name="detserve-logs", daemon=True).start()
                self._process = f"{socket.gethostname()}/{os.getpid()}"
                self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            lines = [self._queue.get()]
            time.sleep(self.GATHER_SECONDS)  # one round trip for a burst
            while len(lines) < 500:
                try:
                    lines.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                write(self.client, lines)
            except redis.RedisError:
                pass  # the broker is down: these lines are lost, the process goes on


def write(client: redis.Redis, lines: list[Line]) -> None:
    """Append lines to their services' streams, capped and expiring."""
    pipe = client.pipeline(transaction=False)
    for service_id, line in lines:
        key = KEY.format(service_id=service_id)
        pipe.xadd(key, line, maxlen=MAX_LINES, approximate=True)  # type: ignore[arg-type]
        pipe.expire(key, KEEP_SECONDS)
    pipe.execute()


_installed: dict[tuple[str, str], ServiceLogHandler] = {}


def access(message: str, *args: object) -> None:
    """One INFO line per request about the current service, straight to the installed handlers:
    a LogRecord (its caller lookup, its locks) would cost a prediction several times as much,
    and these lines are for the service's logs only."""
    service_id = SERVICE.get()
    if service_id:
        text, now, rid = message % args if args else message, time.time(), REQUEST.get()
        for handler in _installed.values():
            handler.put(service_id, "INFO", text, now, rid)


def install(redis_url: str, component: str) -> ServiceLogHandler:
    """Attach the handler for this Redis and component to detserve's logger (once per pair)."""
    handler = _installed.get((redis_url, component))
    if handler is None:
        handler = _installed[(redis_url, component)] = ServiceLogHandler(redis_url, component)
        logging.getLogger(LOGGER).addHandler(handler)
    root = logging.getLogger(LOGGER)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)  # deploy steps and state changes are INFO
    return handler


def read(client: redis.Redis, service_id: str, since: float, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` lines about a service written at or after `since` (epoch s), oldest
    first."""
    entries = client.xrevrange(KEY.format(service_id=service_id), "+",
                               f"{max(0, int(since * 1000) - 1000)}", count=limit)
    lines = []
    for _, fields in reversed(list(entries or [])):
        row = {_text(k): _text(v) for k, v in (fields or {}).items()}
        at = float(row.get("time", 0))
        if at < since:
            continue  # stream ids are the server's clock; the record's own time decides
        lines.append({"time": _iso(at), "component": row.get("component"),
                      "level": row.get("level"), "message": row.get("message"),
                      "request_id": row.get("request_id") or None,
                      "process": row.get("process")})
    return lines


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"

