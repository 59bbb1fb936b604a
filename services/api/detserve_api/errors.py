"""One JSON error shape for everything the API can fail with."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from detserve.errors import DetserveError

log = logging.getLogger("detserve.api")

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
          415: "unsupported_media_type", 422: "validation_error", 500: "internal_error",
          503: "unavailable", 504: "timeout"}


def error_response(status: int, code: str, message: str,
                   fields: dict[str, list[str]] | None = None) -> tuple[Response, int]:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return jsonify({"error": body}), status


def response_for(exc: Exception) -> tuple[Response, int]:
    """A DetserveError as its documented error; anything else as a logged internal_error."""
    if isinstance(exc, DetserveError):
        return error_response(exc.status_code, exc.code, exc.message, exc.fields or None)
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "an unexpected error occurred; it was logged")


def register_error_handlers(app: Flask) -> None:
    """DetserveError, HTTP errors (404, 405, 413, schema errors as 400) and crashes, all as JSON."""
    app.register_error_handler(DetserveError, response_for)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        if status == 422 or "messages" in data:
            fields = _flatten(data.get("messages", {}))
            names = ", ".join(sorted(fields)) or "the request"
            detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in sorted(fields.items()))
            return error_response(400, "validation_error", f"invalid {names} ({detail})", fields)
        if status == 400 and "JSON" in (exc.description or ""):
            return error_response(400, "invalid_json", "the body is not valid JSON; send a JSON "
                                  "object with Content-Type: application/json")
        message = exc.description or exc.name
        if status == 405:
            message = f"{exc.name}: this route does not accept that method"
        if status == 413:
            message = "the upload is larger than this server accepts"
        return error_response(status, _CODES.get(status, "error"), message)

    app.register_error_handler(Exception, response_for)


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
