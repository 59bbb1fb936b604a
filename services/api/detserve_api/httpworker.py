"""gunicorn's threaded worker, with the thread that answered a kept-alive connection waiting for
its next request itself.

gunicorn's gthread worker hands each request of a kept-alive connection from its main thread (whose
poller saw it arrive) to a pool thread, and after the answer back to the main thread to be polled
again: three thread wake-ups per request, and on a machine whose idle cores sleep each costs about
a fifth of a millisecond. A client that calls in a loop, the usual way to use a prediction service,
pays that on every call. Here the pool thread that answered polls the connection itself for a
while (LINGER_SECONDS), so the next request wakes that one thread and nothing else. At most half
the threads linger: the rest serve new connections and those handed back to the main poller as
gthread does, so lingering never leaves a request without a thread.

It also reads a request body of known length in one piece (WholeBody): gunicorn's readers pass a
body through several growing buffers, copying a 300 KB upload six times over, which cost a
prediction more than a tenth of a millisecond.
"""

from __future__ import annotations

import select
import threading
import time
from typing import Any

from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import ThreadWorker

# Longer than a client calling in a loop usually spends between two calls, short enough that a
# request queued while every other thread is busy does not wait long for a lingering one.
LINGER_SECONDS = 0.25
POLL_SLICE_SECONDS = 0.25  # how soon a lingering thread notices that the worker is stopping
WHOLE_BODY_BYTES = 64 * 1024  # bodies from this size up are read by WholeBody


class LingeringThreadWorker(ThreadWorker):
    """`--worker-class detserve_api.httpworker.LingeringThreadWorker`."""

    def init_process(self) -> None:
        self._linger_lock = threading.Lock()
        self._lingering = 0
        self._max_lingering = self.cfg.threads // 2
        self._linger_seconds = min(LINGER_SECONDS, float(self.cfg.keepalive))
        super().init_process()

    def handle(self, conn: Any) -> Any:
        keep = super().handle(conn)
        while keep is True and self.alive and self._next_request_comes(conn):
            keep = super().handle(conn)
        return keep  # True: kept alive, the main thread polls it from now on

    def handle_request(self, req: Any, conn: Any) -> Any:
        body = req.body
        if type(body) is Body and type(body.reader) is LengthReader and \
                isinstance(body.reader.unreader, SocketUnreader) and \
                body.reader.length >= WHOLE_BODY_BYTES:
            req.body = WholeBody(body.reader)
        return super().handle_request(req, conn)

    def _next_request_comes(self, conn: Any) -> bool:
        """True when the connection has something to read within the linger time (a request,
        or its close); False to hand it back to the main thread's poller."""
        if conn.parser.unreader.buf.getvalue():
            return True  # the next request was read with the last one
        with self._linger_lock:
            if self._lingering >= self._max_lingering:
                return False
            self._lingering += 1
        try:
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            deadline = time.monotonic() + self._linger_seconds
            while self.alive and (left := deadline - time.monotonic()) > 0:
                if poller.poll(min(left, POLL_SLICE_SECONDS) * 1000):
                    return True
            return False
        finally:
            with self._linger_lock:
                self._lingering -= 1


class WholeBody(Body):  # type: ignore[misc]
    """A Content-Length body that a read of all of it takes in one piece: what the parser already
    holds, then the rest straight from the socket into one buffer. Smaller reads, and reads after
    them, are gunicorn's own."""

    def read(self, size: int | None = None) -> bytes:
        reader = self.reader
        if self.buf.tell() or self.getsize(size) < reader.length or reader.length <= 0:
            return super().read(size)  # type: ignore[no-any-return]
        try:
            data = _read_exactly(reader.unreader, reader.length)
        except Exception:
            self.failed = True  # where the next request starts is unknown: the connection closes
            raise
        reader.length -= len(data)
        return data


def _read_exactly(unreader: SocketUnreader, want: int) -> bytes:
    """`want` bytes (fewer if the client goes away): the unreader's first, then the socket's."""
    held = unreader.take_buffered()
    if len(held) >= want:
        if len(held) > want:
            unreader.unread(held[want:])  # a pipelined next request
        return held[:want]  # type: ignore[no-any-return]
    buf = bytearray(want)
    buf[:len(held)] = held
    view, got = memoryview(buf), len(held)
    while got < want:
        n = unreader.sock.recv_into(view[got:])
        if not n:
            break
        got += n
    return bytes(view[:got])
