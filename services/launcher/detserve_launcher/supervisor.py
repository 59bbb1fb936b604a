"""`detserve up`: embedded Redis, then the API, a CPU worker, the scheduler (and a GPU worker,
Flower) as supervised child processes; restart what dies; stop everything on Ctrl-C/SIGTERM.

The services are named once, in SERVICES: what runs each, when it is wanted, and which secrets
it may hold (the admin token only where it is needed: the API; Flower gets it as basic auth)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis
import requests
from sqlalchemy import func, select

from detserve.celery_app import make_celery
from detserve.config import Settings
from detserve.lane.bus import CeleryBus
from detserve.monitoring import heartbeats
from detserve.service import deployments, versions
from detserve.service.artifacts import ArtifactStore
from detserve.service.demo import DEMO_NAME, demo_model_bytes
from detserve.store import ModelVersion, Store
from detserve_launcher import components
from detserve_launcher.children import Child, shutdown, supervise
from detserve_launcher.components import Launch
from detserve_launcher.private import kept_secret, owned_private_dir, private_dir, write_private

log = logging.getLogger("detserve.up")
READY_TIMEOUT = 120.0
ADMIN_TOKEN, ARTIFACT_TOKEN = "DETSERVE_ADMIN_TOKEN", "DETSERVE_ARTIFACT_TOKEN"
SECRETS = (ADMIN_TOKEN, ARTIFACT_TOKEN)


@dataclass(frozen=True)
class Options:
    """`detserve up`'s command-line options."""

    host: str = "127.0.0.1"
    port: int = 8080
    flower: bool = False
    flower_port: int = 5555


@dataclass(frozen=True)
class Plan:
    """What this `detserve up` runs, decided before anything starts."""

    settings: Settings  # complete: the Redis URL, both tokens, the API's URL, the shm dir
    options: Options
    redis_conf: Path | None  # the embedded Redis' configuration; None: DETSERVE_REDIS_URL is set
    gpu_problem: str | None  # why there is no GPU worker; None: there is one


@dataclass(frozen=True)
class Service:
    """One supervised child: how to launch it, when it is wanted, which secrets it holds."""

    name: str
    launch: Callable[[Plan], Launch]
    wanted: Callable[[Plan], bool]
    secrets: tuple[str, ...] = ()
    started: Callable[[Plan, Child], None] | None = None  # wait for it before the next one


def _redis(plan: Plan) -> Launch:
    assert plan.redis_conf is not None  # wanted only then
    return components.redis_server(plan.redis_conf)


def _always(plan: Plan) -> bool:
    return True


# in starting order; Redis first, and waited for: every other one needs it
SERVICES: tuple[Service, ...] = (
    Service("redis", _redis, lambda p: p.redis_conf is not None,
            started=lambda p, child: wait_for_redis(p.settings.redis_url, child)),
    Service("api", lambda p: components.api(p.settings, host=p.options.host, port=p.options.port),
            _always, secrets=(ADMIN_TOKEN, ARTIFACT_TOKEN)),
    Service("worker-cpu", lambda p: components.worker(p.settings, flavor="cpu"), _always,
            secrets=(ARTIFACT_TOKEN,)),
    Service("scheduler", lambda p: components.scheduler(p.settings), _always),
    Service("worker-gpu", lambda p: components.worker(p.settings, flavor="gpu"),
            lambda p: p.gpu_problem is None, secrets=(ARTIFACT_TOKEN,)),
    Service("flower", lambda p: components.flower(p.settings, address="127.0.0.1",
                                                  port=p.options.flower_port),
            lambda p: p.options.flower),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_up(settings: Settings, options: Options) -> int:
    """Run everything until a signal; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s detserve up: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl SQLiteImpl." is noise
    private_dir(settings.data_dir)  # the database, Redis' files, models, logs: this user's only
    logs = private_dir(settings.data_dir / "logs")
    own_shm = "" if settings.shm_dir else embedded_shm_dir(settings)  # ours to remove at the end
    if settings.shm_dir or own_shm:
        owned_private_dir(Path(settings.shm_dir or own_shm))  # refused before anything starts
    children: list[Child] = []
    stopping = {"flag": False}

    def on_signal(signum: int, _frame: Any) -> None:
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        plan = prepare(settings, options, settings.shm_dir or own_shm)
        settings = plan.settings
        store = Store(settings.database_url)
        store.migrate()
        for service in SERVICES:
            if not service.wanted(plan):
                continue
            launch = service.launch(plan)
            child = Child(service.name, launch.cmd, child_env(plan, service, launch),
                          logs / f"{service.name}.log")
            child.start()
            children.append(child)
            if service.started:
                service.started(plan, child)
        wait_until_ready(settings, options, children, stopping)
        if stopping["flag"]:
            return 0
        rt = deployments.Runtime(store, ArtifactStore(settings.artifacts_dir),
                                 CeleryBus(make_celery(settings, "detserve-up")),
                                 settings.autostop_hour_seconds)
        register_demo(rt, settings)
        redeployed = deployments.recover(rt)
        if redeployed:
            log.info("redeploying %d service(s) that were running", len(redeployed))
        url = f"http://{_client_host(options.host)}:{options.port}/"
        print(f"detserve is up.\n  UI and API: {url}\n  admin token: {settings.admin_token}\n"
              f"  data dir:   {settings.data_dir}\n  logs:       {logs}", flush=True)
        if options.flower:
            print(f"  Flower:     http://127.0.0.1:{options.flower_port}/ (user admin, the admin "
                  "token)", flush=True)
        supervise(children, stopping)
        return 0
    finally:
        shutdown(children)
        if own_shm:
            shutil.rmtree(own_shm, ignore_errors=True)  # images in flight died with the children


def prepare(settings: Settings, options: Options, shm_dir: str) -> Plan:
    """The settings every child gets: tokens and the Redis password kept 0600 in the data dir."""
    data = settings.data_dir
    token = settings.admin_token.strip() or kept_secret(data / "admin_token", "admin token")
    artifact = (settings.artifact_token.strip()
                or kept_secret(data / "artifact_token", "artifact token"))
    redis_url, conf = settings.redis_url, None
    if not redis_url:
        password = kept_secret(data / "redis_password", "Redis password")
        port = free_port()
        conf = redis_conf(private_dir(data / "redis"), port, password)
        redis_url = f"redis://:{password}@127.0.0.1:{port}/0"
    gpu = components.gpu_problem()
    if gpu is not None:
        log.info("no GPU worker: %s", gpu)
    api_url = settings.api_url or f"http://{_client_host(options.host)}:{options.port}"
    return Plan(replace(settings, admin_token=token, artifact_token=artifact, redis_url=redis_url,
                        api_url=api_url, shm_dir=shm_dir), options, conf, gpu)


def child_env(plan: Plan, service: Service, launch: Launch) -> dict[str, str]:
    """The environment of one child: the settings, and only the secrets its entry names."""
    own = plan.settings.to_env()
    env = {k: v for k, v in {**os.environ, **own}.items() if k not in SECRETS}
    return {**env, **{k: own[k] for k in service.secrets}, "PYTHONUNBUFFERED": "1", **launch.env}


def redis_conf(rdir: Path, port: int, password: str) -> Path:
    """The embedded Redis' configuration: a file (0600), so the password is in no command line;
    on 127.0.0.1 only, persisting (AOF) in the data dir."""

    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return write_private(rdir / "redis.conf", "\n".join([
        f"port {port}", "bind 127.0.0.1", "protected-mode yes", f"requirepass {quoted(password)}",
        f"dir {quoted(str(rdir))}", "appendonly yes", "appendfsync everysec", "save 60 1",
        "daemonize no", ""]))


def embedded_shm_dir(settings: Settings) -> str:
    """Where `detserve up` hands sync predictions' images over in memory ("" without /dev/shm):
    every component runs on this machine."""
    if not os.path.isdir("/dev/shm"):
        return ""
    digest = hashlib.sha256(str(settings.data_dir).encode()).hexdigest()[:12]
    return f"/dev/shm/detserve-{digest}"  # one per data dir, so two `detserve up`s never mix


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


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


def wait_until_ready(settings: Settings, options: Options, children: list[Child],
                     stopping: dict[str, bool]) -> None:
    """Wait for the API's /readyz, a CPU worker's and the scheduler's heartbeat."""
    client = redis.Redis.from_url(settings.redis_url)
    url = f"http://{_client_host(options.host)}:{options.port}/readyz"
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
