"""What every request goes through first, whatever the route and whichever app answers it
(Flask, or the prediction routes' own WSGI app): `Entrance`, the outermost WSGI layer.

- the request id (the caller's X-Request-Id when it is a short token, else a new one) in
  environ["detserve.request_id"] and on every answer, errors and 404s included;
- the time the request arrived;
- the route's body limit, judged from the announced Content-Length before a byte of the body is
  read (413 at once); the same limit bounds a chunked body as it arrives;
- a deadline on the body (DETSERVE_BODY_TIMEOUT): a client that stops sending ends its request
  with 408 instead of holding a thread.

Then the app judges the credentials and the service's status, also from the headers; only a
request that passes them has its body read, in bounded chunks.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from detserve.errors import DetserveError, PayloadTooLarge
from detserve_api.errors import REQUEST_ID, response_for

STARTED = "detserve.started"  # environ: perf_counter() when the request reached the app
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
KB = 1024
JSON_LIMIT = 16 * KB  # every route that takes no upload (JSON bodies, or none)
MULTIPART_ALLOWANCE = 64 * KB  # a multipart body's boundaries, part headers and small fields

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Limits = list[tuple[re.Pattern[str], int]]  # the upload routes' paths and their body limits


class BodyTimeout(DetserveError):
    status_code = 408
    code = "request_timeout"


class Entrance:
    """app.wsgi_app = Entrance(app.wsgi_app, body_timeout, upload_limits)."""

    def __init__(self, app: WSGIApp, body_timeout: float, uploads: Limits) -> None:
        self.app, self.body_timeout, self.uploads = app, body_timeout, uploads

    def limit(self, path: str) -> int:
        """The most bytes a body may have on this path."""
        for route, limit in self.uploads:
            if route.match(path):
                return limit
        return JSON_LIMIT

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        environ[STARTED] = time.perf_counter()
        given = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = environ[REQUEST_ID] = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        sock = environ.get("gunicorn.socket")  # gunicorn resets it for the connection's next request
        if sock is not None and self.body_timeout > 0:
            sock.settimeout(self.body_timeout)
        limit, announced = self.limit(environ.get("PATH_INFO", "")), _announced(environ)
        body = environ["wsgi.input"] = TimedInput(environ["wsgi.input"], self.body_timeout,
                                                  announced, limit)
        refused = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(("X-Request-Id", request_id))
            if int(status[:3]) >= 400 and not body.complete:
                refused.append(True)
            return start_response(status, headers, exc_info)

        if announced > limit:
            answer = response_for(PayloadTooLarge(
                f"the body announces {announced} bytes; this route accepts at most {limit}"),
                request_id)(environ, start)
        else:
            answer = self.app(environ, start)
        if refused and sock is not None:
            return _ThenStopReading(answer, sock)
        return answer


class _ThenStopReading:
    """An answer after which the connection stops reading: a refused request's unread body is
    not waited for (the server would hold a thread draining a body that may never come)."""

    def __init__(self, answer: Iterable[bytes], sock: socket.socket) -> None:
        self.answer, self.sock = answer, sock

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.answer)

    def close(self) -> None:  # the server calls it once the answer is written
        close = getattr(self.answer, "close", None)
        if close is not None:
            close()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)


def _announced(environ: dict[str, Any]) -> int:
    """The body's announced length: -1 for a chunked body, 0 for none."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return -1
    length = environ.get("CONTENT_LENGTH") or ""
    return int(length) if length.isdigit() else 0


class TimedInput:
    """The request body, whose socket timeout is a 408 (BodyTimeout) for the caller (a reader
    would report an OSError as a client that went away), and which ends with a 413 once it
    passes the route's limit (a chunked body announces no length)."""

    def __init__(self, stream: Any, seconds: float, length: int, limit: int) -> None:
        self.stream, self.seconds, self.limit = stream, seconds, limit
        self.left = length  # -1: chunked
        self.read_bytes = 0
        self.complete = length == 0  # read to its end

    def read(self, size: int = -1) -> bytes:
        try:
            return self._count(self.stream.read(self._within(size)), size)
        except TimeoutError as exc:
            raise self._timeout() from exc

    def readline(self, size: int = -1) -> bytes:
        try:
            return self._count(self.stream.readline(self._within(size)), size)
        except TimeoutError as exc:
            raise self._timeout() from exc

    def _within(self, size: int) -> int:
        """Never past the announced length (PEP 3333): a server whose input is the socket itself
        would wait there for the connection's next request."""
        if self.left < 0:  # chunked: the server ends it
            return size
        return self.left if size < 0 else min(size, self.left)

    def _count(self, data: bytes, size: int) -> bytes:
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise PayloadTooLarge(f"the body is larger than this route accepts ({self.limit} "
                                  "bytes at most)")
        if self.left > 0:
            self.left -= len(data)
        if self.left == 0 or (not data and size != 0):
            self.complete = True
        return data

    def _timeout(self) -> BodyTimeout:
        return BodyTimeout(f"the request body did not arrive within {self.seconds:g} s; "
                           "send it at once, or ask the operator to raise DETSERVE_BODY_TIMEOUT")


def upload_limits(image_routes: re.Pattern[str], model_routes: re.Pattern[str],
                  max_image_bytes: int, max_model_bytes: int) -> Limits:
    """The body limits of the routes that take uploads (multipart: the file and its framing)."""
    return [(image_routes, max_image_bytes + MULTIPART_ALLOWANCE),
            (model_routes, max_model_bytes + MULTIPART_ALLOWANCE)]
