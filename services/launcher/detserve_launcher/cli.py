"""The `detserve` command: `up` (everything on this machine) or one component each."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from detserve.config import MissingToken, Settings, admin_token, keep_files_private
from detserve_launcher import components


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


def main(argv: Sequence[str] | None = None) -> int:
    keep_files_private()  # and every component started from here: execve keeps the umask
    args = build_parser().parse_args(argv)
    if getattr(args, "data_dir", None):
        os.environ["DETSERVE_DATA_DIR"] = args.data_dir
    if getattr(args, "concurrency", None):  # what sizes the worker's per-thread TensorRT contexts
        os.environ["DETSERVE_WORKER_CONCURRENCY"] = str(args.concurrency)
    settings = Settings.from_env()
    if args.command == "up":
        from detserve_launcher.supervisor import Options, run_up

        return run_up(settings, Options(host=args.host, port=args.port, flower=args.flower,
                                        flower_port=args.flower_port))
    if args.command == "migrate":
        from detserve.store import Store

        Store(settings.database_url).migrate()
        return 0
    if not settings.redis_url:
        print("detserve: set DETSERVE_REDIS_URL (e.g. redis://:PASSWORD@127.0.0.1:6379/0) to run one "
              "component; `detserve up` runs an embedded Redis for you", file=sys.stderr)
        return 2
    try:
        launch = component(args, settings)
    except MissingToken as exc:
        print(f"detserve: cannot start {args.command}: {exc}", file=sys.stderr)
        return 2
    return _exec(launch)


def component(args: argparse.Namespace, settings: Settings) -> components.Launch:
    """What runs one component named on the command line."""
    if args.command == "api":
        admin_token(settings)  # refuse now, with the reason, rather than in every gunicorn worker
        return components.api(settings, host=args.host, port=args.port, workers=args.workers,
                              threads=args.threads)
    if args.command == "worker":
        if args.flavor == "gpu":
            problem = components.gpu_problem()
            if problem:
                print(f"detserve: cannot start a GPU worker: {problem}", file=sys.stderr)
                raise SystemExit(3)
        if args.check:
            raise SystemExit(0)
        return components.worker(settings, flavor=args.flavor, concurrency=args.concurrency)
    if args.command == "scheduler":
        return components.scheduler(settings)
    return components.flower(settings, address=args.address, port=args.port)


def _exec(launch: components.Launch) -> int:
    sys.stdout.flush()
    os.execve(launch.cmd[0], launch.cmd, {**os.environ, **launch.env})
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
