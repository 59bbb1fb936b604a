"""One JSON error shape for everything the API can fail with, rendered in one place (render).

The body is the contract's `{"error": {"code", "message", "fields"?}}` plus the request's id
(`"request_id"`), so a caller can quote it and an operator find the log lines.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

import kombu.exceptions
import redis
import sqlalchemy.exc
from flask import Flask, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from detserve.errors import DetserveError

log = logging.getLogger("detserve.api")

REQUEST_ID = "detserve.request_id"  # the WSGI environ key the entrance keeps the id under
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 408: "request_timeout", 409: "conflict",
          413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error",
          500: "internal_error", 503: "unavailable", 504: "timeout"}
RETRY_AFTER_SECONDS = 2

# A broker or database that is down, hung or restarting is our fault and passes: 503 with
# Retry-After, never a 500 (redis-py, kombu/Celery publishing, SQLAlchemy and raw sqlite3, and the
# OS-level socket errors under them).
OUTAGES: tuple[type[BaseException], ...] = (
    redis.RedisError, kombu.exceptions.OperationalError, sqlalchemy.exc.TimeoutError,
    ConnectionError, TimeoutError,
)
DB_OUTAGES = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
# SQLite says OperationalError for a lock held too long and for a missing table alike: only
# the first kind passes
SQLITE_OUTAGES = ("locked", "busy", "unable to open", "disk i/o")


def render(status: int, code: str, message: str, *, request_id: str = "",
           fields: dict[str, list[str]] | None = None) -> Response:
    """The one error renderer (the Flask handlers and the entrance both answer with it)."""
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    if request_id:
        body["request_id"] = request_id
    response = Response(json.dumps({"error": body}), status=status, mimetype="application/json")
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def is_outage(exc: BaseException) -> bool:
    """True for a broker/database that did not answer (not for a bug or a bad request)."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc.orig, sqlite3.Error):
            return _sqlite_outage(exc.orig)
        return isinstance(exc, DB_OUTAGES)
    if isinstance(exc, sqlite3.OperationalError):
        return _sqlite_outage(exc)
    return isinstance(exc, OUTAGES)


def _sqlite_outage(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc).lower() for word in SQLITE_OUTAGES)


def response_for(exc: Exception, request_id: str = "") -> Response:
    """A DetserveError as its documented error, an outage of the broker or the database as 503
    (ours, not the caller's: it may pass), anything else as a logged internal_error."""
    if isinstance(exc, DetserveError):
        response = render(exc.status_code, exc.code, exc.message, request_id=request_id,
                          fields=exc.fields or None)
        response.headers.update(getattr(exc, "headers", {}))  # e.g. a 429's Retry-After
        return response
    if is_outage(exc):
        log.warning("unavailable (request %s): %s: %s", request_id or "-", type(exc).__name__, exc)
        return render(503, "unavailable", "the broker (Redis) or the database cannot be reached; "
                      "try again shortly", request_id=request_id)
    log.error("unhandled error (request %s)", request_id or "-", exc_info=exc)
    return render(500, "internal_error", "an unexpected error occurred; it was logged",
                  request_id=request_id)


def register_error_handlers(app: Flask) -> None:
    """DetserveError, HTTP errors (404, 405, 413, schema errors as 400) and crashes, all as JSON."""


    def _any(exc: Exception) -> Response:
        request_id = request.environ.get(REQUEST_ID, "")
        if isinstance(exc, HTTPException):
            status, code, message, fields = _http(exc)
            return render(status, code, message, request_id=request_id, fields=fields)
        return response_for(exc, request_id)

    # HTTPException too, by name: flask-smorest registers its own handler for it
    for kind in (HTTPException, Exception):
        app.register_error_handler(kind, _any)


def _http(exc: HTTPException) -> tuple[int, str, str, dict[str, list[str]] | None]:
    status = exc.code or 500
    data = getattr(exc, "data", None) or {}
    if status == 422 or "messages" in data:
        fields = _flatten(data.get("messages", {}))
        names = ", ".join(sorted(fields)) or "the request"
        detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in sorted(fields.items()))
        return 400, "validation_error", f"invalid {names} ({detail})", fields
    if status == 400 and "JSON" in (exc.description or ""):
        return 400, "invalid_json", ("the body is not valid JSON; send a JSON object with "
                                     "Content-Type: application/json"), None
    message = exc.description or exc.name
    if status == 405:
        message = f"{exc.name}: this route does not accept that method"
    if status == 413:
        message = "the upload is larger than this route accepts"
    return status, _CODES.get(status, "error"), message, None


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """webargs' {location: {field: [msg]}} (nested for nested schemas) → {"a.b": [msg]}."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            if not prefix and key in {"json", "form", "files", "query", "view_args", "headers"}:
                out.update(_flatten(value))
                continue
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out[prefix or "body"] = list(messages)
    else:
        out[prefix or "body"] = [str(messages)]
    return out
