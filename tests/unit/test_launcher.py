"""The launcher: secrets kept 0600 and written whole, private directories, one table of services,
and `detserve api` refusing to run without an admin token."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from detserve.config import Settings
from detserve.errors import Unauthorized
from detserve_api.auth import bearer_is, is_admin
from detserve_launcher import components
from detserve_launcher.private import kept_secret, owned_private_dir, private_dir
from detserve_launcher.supervisor import SERVICES, Options, Plan, child_env
from support import child_env as component_env
from support import detserve_cmd, free_port


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_secret_is_made_once_kept_0600_and_a_blank_one_replaced(tmp_path, capsys):
    path = tmp_path / "admin_token"
    first = kept_secret(path, "admin token")
    assert len(first) >= 32 and mode(path) == 0o600
    assert kept_secret(path, "admin token") == first
    assert capsys.readouterr().err == ""
    path.write_text("  \n")  # a crash between creating the file and writing it
    second = kept_secret(path, "admin token")
    assert second and second != first and path.read_text() == second and mode(path) == 0o600
    assert f"{path} was empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["admin_token"]  # no temporary left


def test_processes_racing_for_a_new_secret_all_get_the_one_kept(tmp_path):
    path, got = tmp_path / "redis_password", []
    threads = [threading.Thread(target=lambda: got.append(kept_secret(path, "x"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(got) == {path.read_text()}


def test_private_dir_makes_or_tightens_ours(tmp_path):
    fresh = private_dir(tmp_path / "a" / "b")
    assert mode(fresh) == 0o700
    old = tmp_path / "old"
    old.mkdir()
    old.chmod(0o755)
    assert mode(private_dir(old)) == 0o700


def test_shared_memory_dir_is_made_0700_and_only_a_private_one_of_ours_accepted(tmp_path):
    assert mode(owned_private_dir(tmp_path / "shm")) == 0o700
    assert owned_private_dir(tmp_path / "shm") == tmp_path / "shm"  # a stale one of ours
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o750)
    with pytest.raises(SystemExit, match="accessible to other users .mode 0750"):
        owned_private_dir(tmp_path / "open")
    (tmp_path / "link").symlink_to(tmp_path / "shm")
    with pytest.raises(SystemExit, match="not a directory"):
        owned_private_dir(tmp_path / "link")
    if os.geteuid() == 0:
        (tmp_path / "theirs").mkdir(mode=0o700)
        os.chown(tmp_path / "theirs", 65534, 65534)
        with pytest.raises(SystemExit, match="belongs to uid 65534"):
            owned_private_dir(tmp_path / "theirs")


def test_a_blank_configured_token_matches_no_bearer():
    for blank in ("", "  "):
        with pytest.raises(Unauthorized):
            is_admin("Bearer ", blank)
        with pytest.raises(Unauthorized):
            is_admin("Bearer  ", blank)
        assert not bearer_is("Bearer ", blank)
    assert is_admin("Bearer tok", "tok") and bearer_is("Bearer tok", "tok")
    assert not bearer_is("Bearer é", "tok")  # no exception for what is not ASCII


def test_the_services_are_named_once():
    assert [s.name for s in SERVICES] == ["redis", "api", "worker-cpu", "scheduler", "worker-gpu",
                                          "flower"]


def test_each_child_gets_only_its_own_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("DETSERVE_ADMIN_TOKEN", "from-the-shell")
    settings = Settings(data_dir=tmp_path, redis_url="redis://:pw@127.0.0.1:1/0", admin_token="adm",
                        artifact_token="art").resolved()
    plan = Plan(settings, Options(flower=True), tmp_path / "redis.conf", None)
    envs = {}
    for service in SERVICES:
        launch = service.launch(plan)
        envs[service.name] = child_env(plan, service, launch)
        assert not {"adm", "art", "pw"} & {part for arg in launch.cmd for part in arg.split(":")}
        assert not any("adm" in arg or ":pw@" in arg for arg in launch.cmd), launch.cmd
    assert envs["api"]["DETSERVE_ADMIN_TOKEN"] == "adm" and envs["api"]["DETSERVE_ARTIFACT_TOKEN"] == "art"
    for name in ("worker-cpu", "worker-gpu"):
        assert "DETSERVE_ADMIN_TOKEN" not in envs[name] and envs[name]["DETSERVE_ARTIFACT_TOKEN"] == "art"
    for name in ("scheduler", "redis", "flower"):
        assert "DETSERVE_ADMIN_TOKEN" not in envs[name] and "DETSERVE_ARTIFACT_TOKEN" not in envs[name]
    assert envs["flower"]["FLOWER_BASIC_AUTH"] == "admin:adm"
    assert envs["flower"]["CELERY_BROKER_URL"] == settings.redis_url


def test_the_supervisor_does_not_import_the_cli():
    code = ("import sys, detserve_launcher.supervisor, detserve_launcher.components; "
            "assert 'detserve_launcher.cli' not in sys.modules, 'cycle'")
    env = component_env(Settings(data_dir=Path("/nonexistent")))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert components.Launch(["x"]).env == {}


@pytest.mark.parametrize("kept", [None, "", "  \n"])
def test_detserve_api_refuses_to_start_without_an_admin_token(tmp_path, kept):
    if kept is not None:
        (tmp_path / "admin_token").write_text(kept)
    env = component_env(Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0").resolved())
    env["DETSERVE_ADMIN_TOKEN"] = " "
    proc = subprocess.run(detserve_cmd("api", "--host", "127.0.0.1", "--port", str(free_port())),
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "cannot start api: no admin token: set DETSERVE_ADMIN_TOKEN" in proc.stderr
    # and it says how to make one, and where a kept one would be read from
    assert "export DETSERVE_ADMIN_TOKEN=$(openssl rand -hex 32)" in proc.stderr
    assert str(tmp_path / "admin_token") in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("entry", [
    "import detserve_worker_cpu",
    "import detserve_scheduler",
    "from detserve_api import create_app; create_app()",
    "from detserve_launcher.cli import main; main(['migrate'])",
])
def test_every_component_entry_point_keeps_its_files_private(tmp_path, entry):
    # given a component started some other way than by `detserve`, under a permissive umask
    env = component_env(Settings(data_dir=tmp_path / "data", redis_url="redis://127.0.0.1:1/0",
                                 admin_token="x").resolved())
    code = f"import os; os.umask(0o022); {entry}; print(oct(os.umask(0o022)))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    # then what it creates from then on is its user's only
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "0o77"
