"""The request body as the apps read it (entrance.TimedInput): never past the announced length,
which on a server whose input is the socket itself (werkzeug's) would wait for the next request."""

from __future__ import annotations

import io

import pytest

from detserve.errors import PayloadTooLarge
from detserve_api.entrance import TimedInput


class SocketLike(io.BytesIO):
    """The body, then the connection's next request: reading into it is the bug."""

    def __init__(self, body: bytes) -> None:
        super().__init__(body + b"GET /next HTTP/1.1\r\n")
        self.body = len(body)

    def read(self, size: int | None = -1) -> bytes:
        assert size is not None and 0 <= size <= self.body - self.tell(), "read past the body"
        return super().read(size)

    def readline(self, size: int | None = -1) -> bytes:
        assert size is not None and 0 <= size <= self.body - self.tell(), "read past the body"
        return super().readline(size)


@pytest.mark.parametrize("size", [-1, 1, 7, 64 * 1024])
def test_reads_stop_at_the_announced_length(size):
    body = TimedInput(SocketLike(b"x" * 100), 5.0, 100, 1000)
    got = b"".join(iter(lambda: body.read(size), b""))
    assert got == b"x" * 100 and body.complete


def test_readline_stops_at_the_announced_length():
    body = TimedInput(SocketLike(b"a\r\nb"), 5.0, 4, 1000)
    assert body.readline() == b"a\r\n" and body.readline(100) == b"b" and body.read() == b""


def test_a_chunked_body_is_cut_past_the_limit():
    body = TimedInput(io.BytesIO(b"x" * 50), 5.0, -1, 40)
    with pytest.raises(PayloadTooLarge):
        body.read()
