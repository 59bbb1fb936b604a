"""Issue 12's slow-body attack on a real gunicorn-served API, through real sockets on 127.0.0.1:
bodies announced over a route's limit are refused at once, bodies that never come end in 408,
the API's memory stays flat, /healthz answers throughout and predictions still succeed."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api_helpers import running_service
from detserve.service.demo import build_blob_detector
from support import Proc, blobs_image, child_env, detserve_cmd, free_port, wait_for

ATTACKERS = 40
BODY_TIMEOUT = 2


@pytest.fixture(scope="module")
def api(stack, tmp_path_factory) -> Iterator[tuple[int, Proc]]:
    """`detserve api` (gunicorn, 1 process, 4 threads) on the stack's database and Redis."""
    port, log = free_port(), tmp_path_factory.mktemp("api") / "api.log"
    env = child_env(stack.settings, DETSERVE_BODY_TIMEOUT=str(BODY_TIMEOUT))
    proc = Proc("api", detserve_cmd("api", "--host", "127.0.0.1", "--port", str(port),
                                    "--workers", "1", "--threads", "4"), env, log).start()
    try:
        wait_for(lambda: _healthz(port, 1.0), 60, what=lambda: f"the API to answer\n{proc.tail()}")
        yield port, proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def service(stack):
    return running_service(stack.app.test_client(), "slow-clients",
                           build_blob_detector().SerializeToString())


def _healthz(port: int, timeout: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return _status(sock) == 200
    except OSError:
        return False


def _status(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        piece = sock.recv(4096)
        if not piece:
            return 0
        head += piece
    return int(head.split(b" ", 2)[1])


def _rss_kb(leader: int) -> int:
    """Resident memory of the API: gunicorn's master and workers (its process group)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == leader:  # the process group
                status = (stat.parent / "status").read_text()
                total += int(status.split("VmRSS:")[1].split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total


def _announce(port: int, path: str, length: int, headers: str = "") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}"
                  "Content-Type: multipart/form-data; boundary=b\r\n"
                  f"Content-Length: {length}\r\n\r\n").encode())
    return sock


def _predict(port: int, service: dict) -> dict:
    image = blobs_image([("red", 10, 10, 50, 50)])
    body = (b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'
            + image + b"\r\n--b--\r\n")
    with _announce(port, f"/v1/services/{service['id']}/predict", len(body),
                   f"X-Service-Key: {service['key']}\r\nConnection: close\r\n") as sock:
        sock.sendall(body)
        data = b""
        while piece := sock.recv(65536):
            data += piece
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:500]
    return json.loads(payload)  # type: ignore[no-any-return]


def test_announced_giants_are_refused_at_once_and_memory_stays_flat(api, service):
    port, proc = api
    assert proc.proc is not None
    before = _rss_kb(proc.proc.pid)
    started = time.monotonic()
    # given 40 connections announcing 500 MB predictions (half with a valid key), then silent
    socks = [_announce(port, f"/v1/services/{service['id']}/predict", 500_000_000,
                       f"X-Service-Key: {service['key']}\r\n" if i % 2 else "")
             for i in range(ATTACKERS)]
    try:
        # then each is refused with 413 before a byte of its body is read
        assert [_status(s) for s in socks] == [413] * ATTACKERS
        assert time.monotonic() - started < 20
        # and /healthz answers while those connections stay open, and memory did not grow
        assert _healthz(port, 5.0)
        assert _rss_kb(proc.proc.pid) - before < 50 * 1024, (before, _rss_kb(proc.proc.pid))
    finally:
        for sock in socks:
            sock.close()
    assert set(_predict(port, service)["detection_classes"]) == {"red"}


def test_bodies_that_never_come_end_in_408_and_do_not_starve_the_api(api, service):
    port, _ = api
    # given more silent connections than the API has threads, each announcing a small body
    # with a valid key (so nothing refuses them before their body is due)
    socks = [_announce(port, f"/v1/services/{service['id']}/predict", 100_000,
                       f"X-Service-Key: {service['key']}\r\n") for _ in range(10)]
    try:
        started = time.monotonic()
        # then /healthz is answered meanwhile, and every slow one ends with 408
        assert wait_for(lambda: _healthz(port, 2.0), 30, what="/healthz under slow clients")
        assert [_status(s) for s in socks] == [408] * len(socks)
        assert time.monotonic() - started < 10 * BODY_TIMEOUT + 10
    finally:
        for sock in socks:
            sock.close()
    assert set(_predict(port, service)["detection_classes"]) == {"red"}


def test_json_routes_take_a_few_kilobytes(api):
    port, _ = api
    with _announce(port, "/v1/services", 1_000_000) as sock:
        assert _status(sock) == 413


def test_a_refusal_without_a_body_keeps_the_connection(api):
    port, _ = api
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(3):  # a 404 and then more requests on the same connection
            sock.sendall(b"GET /no/such/route HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"}" not in data:
                data += sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 404")
