"""Faults to inject: a redis-server of a test's own (to SIGSTOP, kill and start again) and a TCP
forwarder to a local server (to reach it from a network namespace, or to cut it)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support import Proc, free_port, redis_alive, wait_for

REDIS_SERVER = "/usr/bin/redis-server"


class PrivateRedis:
    """A redis-server of this test's own, to stop, kill and start again."""

    def __init__(self, tmp: Path, also_bind: tuple[str, ...] = ()) -> None:
        self.port, self.dir, self.binds = free_port(), tmp, ("127.0.0.1", *also_bind)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None

    def start(self) -> None:
        self.proc = Proc("redis", [REDIS_SERVER, "--port", str(self.port), "--bind", *self.binds,
                                   "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                                   "--protected-mode", "no"], dict(os.environ),
                         self.dir / "redis.log").start()
        wait_for(lambda: redis_alive(self.url), 20, what="private redis")

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.proc is not None
        os.kill(self.proc.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None:
            self.signal(signal.SIGCONT)
            self.proc.kill()


class Forwarder:
    """TCP from (host_ip, port) to 127.0.0.1:target, so the namespace reaches a local server."""

    def __init__(self, host_ip: str, target: int) -> None:
        self.target = target
        self.sock = socket.create_server((host_ip, 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.5)
        self.stopped = threading.Event()
        self.open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            server.settimeout(None)
            client.settimeout(None)
            self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopped.set()
        self._thread.join(timeout=5)
        self.sock.close()
        for s in self.open:
            s.close()


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped at the end."""
    import psycopg

    name = f"detserve_ft_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
