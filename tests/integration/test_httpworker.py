"""The API's gunicorn worker (detserve_api.httpworker): a kept-alive connection's next request is
served by the thread that answered the last one, lingering never leaves a request unserved, and
large bodies read in one piece arrive whole and exact."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from detserve_api.httpworker import LINGER_SECONDS
from support import ROOT, Proc, free_port, wait_for

THREADS = 2  # so at most one thread lingers


def _gunicorn(log: Path, threads: int, timeouts: int) -> tuple[Proc, int]:
    """The echo app under gunicorn with the API's worker class; keep-alive and graceful timeouts
    of `timeouts` s. Returns once it listens."""
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
           "--worker-class", "detserve_api.httpworker.LingeringThreadWorker",
           "--threads", str(threads), "--keep-alive", str(timeouts),
           "--graceful-timeout", str(timeouts),
           "--pythonpath", f"{ROOT / 'tests'},{ROOT / 'services' / 'api'}", "wsgi_echo:app"]
    proc = Proc("gunicorn", cmd, {"PATH": "/usr/bin:/bin"}, log).start()
    wait_for(lambda: _accepts(port), 30, what=lambda: f"gunicorn to listen:\n{proc.tail()}")
    return proc, port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    proc, port = _gunicorn(tmp_path / "gunicorn.log", THREADS, timeouts=10)
    try:
        yield port
    finally:
        assert proc.stop(timeout=20) == 0, proc.tail()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _request(path: str, body: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def _answer(sock: socket.socket, buffered: bytearray | None = None) -> dict[str, object]:
    data = buffered if buffered is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        rest += sock.recv(65536)
    data[:] = rest[length:]
    return json.loads(rest[:length])  # type: ignore[no-any-return]


def test_back_to_back_requests_stay_on_one_thread(server: int) -> None:
    with _connect(server) as sock:
        threads = set()
        for i in range(6):
            body = b"x" * (1000 * i)
            sock.sendall(_request(f"/call/{i}", body))
            answer = _answer(sock)
            assert answer["length"] == len(body) and answer["path"] == f"/call/{i}"
            threads.add(answer["thread"])
        assert len(threads) == 1


def test_pipelined_requests_are_all_answered_in_order(server: int) -> None:
    with _connect(server) as sock:
        sock.sendall(_request("/one", b"a") + _request("/two", b"bb") + _request("/three"))
        buffered = bytearray()
        assert [_answer(sock, buffered)["path"] for _ in range(3)] == ["/one", "/two", "/three"]


def test_a_connection_quiet_longer_than_the_linger_is_still_served(server: int) -> None:
    with _connect(server) as sock:
        sock.sendall(_request("/first"))
        _answer(sock)
        time.sleep(LINGER_SECONDS + 0.5)  # the main thread's poller holds it by now
        sock.sendall(_request("/second", b"abc"))
        assert _answer(sock)["length"] == 3


def test_lingering_connections_never_starve_others(server: int) -> None:
    """Right after every kept-alive connection was answered (each thread could linger on one),
    a new connection is still answered at once: at most half the threads linger."""
    socks = [_connect(server) for _ in range(THREADS + 2)]
    fresh_times = []
    try:
        for _ in range(3):
            for sock in socks:
                sock.sendall(_request("/poll"))
                _answer(sock)
            started = time.monotonic()
            with _connect(server) as fresh:
                fresh.sendall(_request("/fresh"))
                assert _answer(fresh)["path"] == "/fresh"
            fresh_times.append(time.monotonic() - started)
    finally:
        for sock in socks:
            sock.close()
    assert sorted(fresh_times)[1] < LINGER_SECONDS / 2  # not queued behind lingering threads


@pytest.mark.parametrize("query", ["", "?chunk=70000", "?chunk=1000"])
def test_large_bodies_arrive_exact(server: int, query: str) -> None:
    """Read whole (WholeBody), or in pieces (gunicorn's own readers), then the next request."""
    body = os.urandom(300_000)
    with _connect(server) as sock:
        sock.sendall(_request(f"/upload{query}", body) + _request("/after", b"tail"))
        buffered = bytearray()
        answer = _answer(sock, buffered)
        assert answer["length"] == len(body)
        assert answer["sha256"] == hashlib.sha256(body).hexdigest()
        assert _answer(sock, buffered)["length"] == 4


def test_a_body_cut_short_closes_only_its_connection(server: int) -> None:
    with _connect(server) as sock:
        request = _request("/cut", b"x" * 300_000)[:150_000]
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)  # the client gives up half way
        buffered = bytearray()
        assert _answer(sock, buffered)["length"] == len(request) - request.index(b"\r\n\r\n") - 4
        assert not buffered and sock.recv(65536) == b""  # then the server closes it
    with _connect(server) as sock:
        body = b"y" * 200_000
        sock.sendall(_request("/next", body))
        assert _answer(sock)["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_client_leaving_while_lingered_on_does_no_harm(server: int) -> None:
    for _ in range(3):
        with _connect(server) as sock:
            sock.sendall(_request("/bye"))
            _answer(sock)
    with _connect(server) as sock:
        sock.sendall(_request("/still-here"))
        assert _answer(sock)["path"] == "/still-here"


def test_stopping_with_a_lingering_connection_is_prompt(tmp_path: Path) -> None:
    proc, port = _gunicorn(tmp_path / "gunicorn.log", threads=4, timeouts=30)
    try:
        with _connect(port) as sock:
            sock.sendall(_request("/linger"))
            _answer(sock)
            started = time.monotonic()
            proc.kill(signal.SIGTERM)
            assert proc.proc is not None
            assert proc.proc.wait(timeout=20) == 0, proc.tail()
            assert time.monotonic() - started < 10  # not the 30 s keep-alive or graceful timeout
    finally:
        proc.kill()  # whatever failed, nothing is left running
