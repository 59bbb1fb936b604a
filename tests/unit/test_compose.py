"""docker-compose.yml describes the real distributed run, and every command exists in the CLI."""

from __future__ import annotations

from pathlib import Path

import yaml

from detserve_launcher.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def load() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_role_is_there():
    services = load()["services"]
    assert {"redis", "postgres", "api", "scheduler", "worker-cpu", "worker-gpu", "flower"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]  # the broker keeps its queues
    assert any("postgres" in v for v in services["postgres"].get("volumes", []))


def test_every_detserve_command_parses():
    parser = build_parser()
    for name, svc in load()["services"].items():
        cmd = svc.get("command")
        if not cmd or cmd[0] != "detserve":
            continue
        args = parser.parse_args(cmd[1:])
        assert args.command in {"api", "worker", "scheduler", "flower"}, name


def test_workers_are_on_their_queues_and_dockerfiles_exist():
    services = load()["services"]
    assert services["worker-cpu"]["command"][-1] == "cpu"
    assert services["worker-gpu"]["command"][-1] == "gpu"
    for svc in services.values():
        build = svc.get("build")
        if build:
            assert (ROOT / build["dockerfile"]).is_file()


def test_api_and_workers_share_the_handoff_memory():
    compose = load()
    assert compose["volumes"]["handoff"]["driver_opts"]["type"] == "tmpfs"
    for name in ("api", "worker-cpu", "worker-gpu"):
        svc = compose["services"][name]
        assert "handoff:/shm" in svc["volumes"], name
        assert svc["environment"]["DETSERVE_SHM_DIR"] == "/shm", name
