"""A WSGI app for the HTTP worker's tests: answers with the serving thread and what it read of the
body (in one read, or in reads of ?chunk=N bytes)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    chunk = int(parse_qs(environ.get("QUERY_STRING", "")).get("chunk", ["0"])[0])
    stream, body = environ["wsgi.input"], b""
    if chunk:
        while piece := stream.read(chunk):
            body += piece
    elif length:
        body = stream.read(length)
    data = json.dumps({"thread": threading.get_ident(), "length": len(body),
                       "sha256": hashlib.sha256(body).hexdigest(),
                       "path": environ["PATH_INFO"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]
