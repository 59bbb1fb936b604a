"""The child processes of `detserve up`: started in their own process groups, restarted when they
die, stopped together."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger("detserve.up")
STOP_GRACE = 15.0


@dataclass
class Child:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # the whole group: gunicorn/celery children too
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self._log:
            self._log.close()


def _die_with_parent() -> None:
    # If `detserve up` itself is killed with SIGKILL, the kernel still stops its children.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def supervise(children: list[Child], stopping: dict[str, bool]) -> None:
    """Restart a child that dies (with a short back-off) until asked to stop."""
    while not stopping["flag"]:
        for child in children:
            if not child.alive() and not stopping["flag"]:
                code = child.proc.returncode if child.proc else None
                child.restarts += 1
                log.warning("%s exited (code %s); restarting it (restart #%d)", child.name, code,
                            child.restarts)
                child.close()
                time.sleep(min(5.0, 0.5 * child.restarts))
                child.start()
        time.sleep(0.5)


def shutdown(children: list[Child]) -> None:
    """SIGTERM every child group (Redis last, so it can flush), then SIGKILL stragglers."""
    apps = [c for c in children if c.name != "redis"]
    for group in (apps, [c for c in children if c.name == "redis"]):
        for child in group:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in group:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
            child.signal(signal.SIGKILL)  # also reaps grandchildren left in the group
            child.proc.wait()
            child.close()
    if children:
        print("detserve stopped.", file=sys.stderr, flush=True)
