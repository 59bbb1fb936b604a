"""What a request means for its service: log lines about it carry the service and the request id
(the one entrance.Entrance gave it), each change made to a service is logged, an async prediction
counts as activity for the idle auto stop, and a prediction answered while the service's stop is
near carries a Warning header.

A WSGI middleware inside the Entrance (so the request id is set), around the Flask app, so each
of these is written once. While a request runs, log records concern its service and request id
(monitoring/logs.py) whichever module writes them; the sync lane's frame carries the id on to the
worker.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from detserve.monitoring import logs
from detserve.service import idle
from detserve.store import Service
from detserve_api.errors import REQUEST_ID

log = logging.getLogger("detserve.api")

SERVICE_PATH = re.compile(r"/v1/services/([^/]+)(?:/([a-z]+))?\Z")
PREDICTIONS = ("predict", "predictions")
StartResponse = Callable[..., Any]


class Warnings:
    """The Warning header per service, each read from the database at most once a second."""

    TTL = 1.0

    def __init__(self, app: Flask) -> None:
        ext = app.extensions["detserve"]
        self.store, self.hour = ext["runtime"].store, ext["settings"].autostop_hour_seconds
        self._cache: dict[str, tuple[float, Service | None]] = {}
        self._lock = threading.Lock()

    def header(self, service_id: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(service_id)
        if hit is None or now - hit[0] > self.TTL:
            with self.store.session(readonly=True) as session:
                hit = (now, session.get(Service, service_id))
            with self._lock:
                self._cache[service_id] = hit
        return idle.warning(hit[1], self.hour) if hit[1] is not None else None


class Activity:
    """Wraps the app's wsgi_app, inside the Entrance: Entrance(Activity(app, app.wsgi_app), ...)."""

    def __init__(self, app: Flask, wsgi: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi, self.warnings = wsgi, Warnings(app)
        self.redis = app.extensions["detserve"]["redis"]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        rid = str(environ.get(REQUEST_ID) or "")
        match = SERVICE_PATH.match(environ.get("PATH_INFO", ""))
        service_id, action = (match.group(1), match.group(2)) if match else (None, None)
        seen: dict[str, str] = {}
        started = time.perf_counter()

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen["status"] = status
            if service_id and action in PREDICTIONS and status.startswith("2"):
                warning = self.warnings.header(service_id)
                if warning:
                    headers.append(("Warning", warning))
            return start_response(status, headers, exc_info)

        with logs.about(service_id, rid or None):
            body = self.wsgi(environ, start)
            method = environ.get("REQUEST_METHOD", "GET")
            if service_id and method not in ("GET", "HEAD", "OPTIONS"):
                self._after(environ, method, service_id, action, seen.get("status", ""),
                            started)
        return body

    def _after(self, environ: dict[str, Any], method: str, service_id: str, action: str | None,
               status: str, started: float) -> None:
        code = int(status[:3]) if status[:3].isdigit() else 0
        if action == "predictions" and code == 202:
            # an async prediction counts as activity for the idle auto stop as a sync one does
            self.redis.zadd(idle.LAST_KEY, {service_id: time.time()}, gt=True)
        args = (method, environ.get("PATH_INFO"), status, (time.perf_counter() - started) * 1000)
        if code >= 500:  # ours to fix: also on the API's own log
            log.warning("%s %s -> %s in %.1f ms", *args, extra={"service_id": service_id})
        else:
            logs.access("%s %s -> %s in %.1f ms", *args)
