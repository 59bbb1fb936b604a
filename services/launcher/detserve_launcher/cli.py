"""The `detserve` command: `up` (everything on this machine) or one component each."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from detserve.config import Settings, admin_token


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and option of `detserve`."""
    parser = argparse.ArgumentParser(prog="detserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole system on this machine (embedded default)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--data-dir", default=None)
    up.add_argument("--flower", action="store_true", help="also run Flower (basic auth)")
    up.add_argument("--flower-port", type=int, default=5555)
    api = sub.add_parser("api", help="the REST API under gunicorn")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument("--workers", type=int, default=2)
    api.add_argument("--threads", type=int, default=16)
    worker = sub.add_parser("worker", help="a Celery worker for one flavor")
    worker.add_argument("--flavor", choices=["cpu", "gpu"], required=True)
    worker.add_argument("--concurrency", type=int, default=None)
    worker.add_argument("--check", action="store_true", help="only check this machine can run it")
    sub.add_parser("scheduler", help="Celery beat + the scheduler queue (auto stop)")
    flower = sub.add_parser("flower", help="Flower for the queues and workers")
    flower.add_argument("--address", default="127.0.0.1")
    flower.add_argument("--port", type=int, default=5555)
    sub.add_parser("migrate", help="bring the database schema up to date")
    return parser


KEEPALIVE_SECONDS = 75  # as nginx's keepalive_timeout


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "data_dir", None):
        os.environ["DETSERVE_DATA_DIR"] = args.data_dir
    if getattr(args, "concurrency", None):  # what sizes the worker's per-thread TensorRT contexts
        os.environ["DETSERVE_WORKER_CONCURRENCY"] = str(args.concurrency)
    settings = Settings.from_env()
    if args.command == "up":
        from detserve_launcher.supervisor import run_up

        return run_up(settings, host=args.host, port=args.port, flower=args.flower,
                      flower_port=args.flower_port)
    if args.command == "migrate":
        from detserve.store import Store

        Store(settings.database_url).migrate()
        return 0
    if not settings.redis_url:
        print("detserve: set DETSERVE_REDIS_URL (e.g. redis://127.0.0.1:6379/0) to run one "
              "component; `detserve up` runs an embedded Redis for you", file=sys.stderr)
        return 2
    return _exec(component_command(args, settings))


def component_command(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The command line that runs one component (also used by `detserve up`)."""
    py = sys.executable
    if args.command == "api":
        # gunicorn's worker heartbeat touches a file on every loop; on a disk that costs
        # milliseconds of the request path, in memory nothing (gunicorn's own advice)
        tmp = ["--worker-tmp-dir", "/dev/shm"] if os.path.isdir("/dev/shm") else []
        # an access line per prediction costs the request path a quarter of a millisecond
        access = ["--access-logfile", "-"] if settings.access_log else []
        return [py, "-m", "gunicorn", "--bind", f"{args.host}:{args.port}", "--workers",
                str(args.workers), "--worker-class", "gthread", "--threads", str(args.threads),
                "--timeout", str(int(settings.predict_timeout) + 30), "--graceful-timeout", "10",
                # clients that call in a loop keep their connection (gunicorn's 2 s default is
                # for behind a proxy); an idle one waits in the poller, not in a thread
                "--keep-alive", str(KEEPALIVE_SECONDS),
                *tmp, *access, "detserve_api:create_app()"]
    if args.command == "worker":
        if args.flavor == "gpu":
            problem = _gpu_problem()
            if problem:
                print(f"detserve: cannot start a GPU worker: {problem}", file=sys.stderr)
                raise SystemExit(3)
        if getattr(args, "check", False):
            raise SystemExit(0)
        concurrency = args.concurrency or settings.worker_concurrency
        # Threads, not prefork: one process holds each model once, a deploy's warm load serves
        # every request after it, and ONNX Runtime/TensorRT/PIL release the GIL while they work.
        module = "detserve_worker_cpu" if args.flavor == "cpu" else "detserve_worker_gpu.app"
        return [py, "-m", "celery", "-A", module, "worker",
                "-Q", args.flavor, "-n", f"{args.flavor}@%h", "-P", "threads", "-c", str(concurrency),
                "--without-gossip", "--without-mingle", "-l", "INFO"]
    if args.command == "scheduler":
        return [py, "-m", "celery", "-A", "detserve_scheduler", "worker", "-B", "-Q", "scheduler",
                "-n", "scheduler@%h", "-c", "1", "--without-gossip", "--without-mingle",
                "-s", str(settings.data_dir / "celerybeat-schedule"), "-l", "INFO"]
    if args.command == "flower":
        user = os.environ.get("DETSERVE_FLOWER_USER", "admin")
        return [py, "-m", "celery", "--broker", settings.redis_url, "flower",
                f"--address={args.address}", f"--port={args.port}",
                f"--basic-auth={user}:{admin_token(settings)}"]
    raise SystemExit(f"unknown command {args.command}")


def _gpu_problem() -> str | None:
    """Ask the GPU worker package, in a child process, whether it can run here."""
    code = ("import detserve_worker_gpu as g, sys; p = g.gpu_problem(); "
            "print(p or ''); sys.exit(1 if p else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stdout.strip() or proc.stderr.strip()[-300:])


def _exec(cmd: list[str]) -> int:
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
