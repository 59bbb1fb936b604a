"""`detserve up`: one command runs everything; Ctrl-C/SIGTERM leaves nothing behind; a restart
on the same data dir finds everything as it was, Running services running again. What it runs is
private to its user: Redis wants a password, every file is 0600, secrets are in no command line."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import requests
from api_client import ApiClient

from detserve.config import Settings
from detserve.inference.synthetic import CLASSES, scene
from detserve_launcher.supervisor import embedded_shm_dir
from support import Proc, child_env, detserve_cmd, free_port, wait_for

pytestmark = pytest.mark.slow


def up_env(data_dir: Path, **env_extra: str) -> dict[str, str]:
    env = child_env(Settings(data_dir=data_dir).resolved())
    for name in ("DETSERVE_REDIS_URL", "DETSERVE_DATABASE_URL", "DETSERVE_ADMIN_TOKEN",
                 "DETSERVE_ARTIFACT_TOKEN", "DETSERVE_API_URL", "DETSERVE_SHM_DIR"):
        env.pop(name, None)  # the embedded default: its own Redis, SQLite, shared memory
    env["DETSERVE_HEARTBEAT_SECONDS"] = "1"
    env.update(env_extra)
    return env


def start_up(data_dir: Path, port: int, log: Path, *args: str, **env_extra: str) -> Proc:
    proc = Proc("up", detserve_cmd("up", "--data-dir", str(data_dir), "--port", str(port), *args),
                up_env(data_dir, **env_extra), log)
    proc.start()
    wait_for(lambda: _up_or_dead(proc), 120, 0.2, what="detserve up to print its address")
    return proc


def _up_or_dead(proc: Proc) -> bool:
    if proc.proc.poll() is not None:
        raise AssertionError(f"detserve up exited:\n{proc.tail()}")
    return "detserve is up." in proc.tail(100_000)


def leftovers(data_dir: Path) -> list[str]:
    """Processes whose command line or environment mention this data dir."""
    found = []
    needle = str(data_dir).encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or needle in environ:
            text = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid}: {text[:200]}")
    return found


def port_free(port: int) -> bool:
    """Nothing listens there any more (connections in TIME_WAIT do not count)."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def stop(proc: Proc, data_dir: Path, port: int) -> None:
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=60) == 0, proc.tail()
    wait_for(lambda: not leftovers(data_dir), 10, what=f"no orphans: {leftovers(data_dir)}")
    assert port_free(port)
    shm = embedded_shm_dir(Settings(data_dir=data_dir).resolved())
    assert not shm or not Path(shm).exists()  # nor the shared-memory directory it made


def test_up_restart_keeps_everything(tmp_path):
    data_dir, port, flower_port = tmp_path / "data", free_port(), free_port()
    data_dir.mkdir()
    data_dir.chmod(0o755)  # as an older detserve, or the default umask, left it
    (data_dir / "admin_token").write_text(" \n")  # a crash between creating and writing it
    proc = start_up(data_dir, port, tmp_path / "up1.log", "--flower", "--flower-port",
                    str(flower_port))
    try:
        token = (data_dir / "admin_token").read_text().strip()
        assert token and token in proc.tail(100_000)
        assert f"{data_dir / 'admin_token'} was empty" in proc.tail(100_000)  # and it says so
        api = ApiClient(f"http://127.0.0.1:{port}", token)
        check_private_host(data_dir, port, token, flower_port, api)
        # the demo model is there on first start, and deploys at once
        models = api.get("/v1/models").json()["models"]
        assert [m["name"] for m in models] == ["demo-detector"]
        running = api.post("/v1/services", json={"model": "demo-detector", "version": 1,
                                                 "flavor": "cpu"}).json()
        stopped = api.post("/v1/services", json={"model": "demo-detector", "version": 1,
                                                 "flavor": "cpu", "name": "to-stop"}).json()
        api.wait_status(running["id"], "Running")
        api.wait_status(stopped["id"], "Running")
        api.post(f"/v1/services/{stopped['id']}/stop")
        truth = scene(5)
        image = truth.encode("JPEG")
        first = requests.post(f"{api.base}/v1/services/{running['id']}/predict",
                              files={"images": ("a.png", image)},
                              headers={"X-Service-Key": running["key"]}, timeout=30)
        assert first.status_code == 200
        assert set(first.json()["detection_classes"]) == {CLASSES[c] for c in truth.classes}
        bmp = truth.encode("BMP")  # 300 KB: the API's gunicorn worker reads it in one piece
        with requests.Session() as session:  # and on a kept-alive connection, twice
            for _ in range(2):
                big = session.post(f"{api.base}/v1/services/{running['id']}/predict",
                                   files={"images": ("a.bmp", bmp)},
                                   headers={"X-Service-Key": running["key"]}, timeout=30)
                assert big.status_code == 200, big.text
                assert set(big.json()["detection_classes"]) == {CLASSES[c] for c in truth.classes}
        stop_at = api.service(running["id"])["auto_stop"]["stop_at"]
        # a child that dies is restarted, and the restart is logged
        worker_pid = next(int(line.split(":")[0]) for line in leftovers(data_dir)
                          if "detserve_worker_cpu" in line)
        os.killpg(os.getpgid(worker_pid), signal.SIGKILL)
        wait_for(lambda: "worker-cpu exited" in proc.tail(100_000), 30, what="restart logged")
    finally:
        stop(proc, data_dir, port)

    proc = start_up(data_dir, port, tmp_path / "up2.log")
    try:
        assert [m["name"] for m in api.get("/v1/models").json()["models"]] == ["demo-detector"]
        assert api.service(stopped["id"])["status"] == "Stopped"
        back = api.wait_status(running["id"], "Running")
        assert back["auto_stop"]["stop_at"] == stop_at  # the countdown was not reset
        again = requests.post(f"{api.base}/v1/services/{running['id']}/predict",
                              files={"images": ("a.png", image)},
                              headers={"X-Service-Key": running["key"]}, timeout=30)
        same = {"inference_ms": 0}
        assert again.status_code == 200 and again.json() | same == first.json() | same
        reasons = [e["reason"] for e in api.get(f"/v1/services/{running['id']}/events").json()["events"]]
        assert reasons[-2:] == ["restart", "deployed"]
    finally:
        stop(proc, data_dir, port)


def check_private_host(data_dir: Path, port: int, token: str, flower_port: int,
                       api: ApiClient) -> None:
    """What another user of this host, or a worker's stolen credential, can reach: nothing."""
    # an empty bearer token is not the admin's, even where a blank token file was found
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/v1/models", headers={"Authorization": "Bearer "})
    assert conn.getresponse().status == 401
    conn.close()
    # the artifact token reads artifacts, and opens nothing else
    artifact_token = (data_dir / "artifact_token").read_text().strip()
    sha = api.get("/v1/models/demo-detector/versions/1").json()["sha256"]
    reader = {"Authorization": f"Bearer {artifact_token}"}
    blob = requests.get(f"{api.base}/v1/artifacts/{sha}", headers=reader, timeout=10)
    assert blob.status_code == 200 and hashlib.sha256(blob.content).hexdigest() == sha
    assert requests.get(f"{api.base}/v1/models", headers=reader, timeout=10).status_code == 401
    assert requests.post(f"{api.base}/v1/services", headers=reader, timeout=10,
                         json={"model": "demo-detector", "version": 1}).status_code == 401
    # the embedded Redis wants the password kept in the data dir, and listens on loopback only
    password = (data_dir / "redis_password").read_text().strip()
    procs = processes(data_dir)
    api_env = next(env for cmd, env in procs.values() if "gunicorn" in cmd)
    url = urlsplit(api_env["DETSERVE_REDIS_URL"])
    assert url.password == password and len(password) >= 32
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=url.port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=url.port, password="guess").ping()
    authed = redis.Redis(host="127.0.0.1", port=url.port, password=password, decode_responses=True)
    assert authed.config_get("bind")["bind"] == "127.0.0.1"
    assert authed.config_get("protected-mode")["protected-mode"] == "yes"
    authed.close()
    # nor in a log (Celery's banner shows the broker URL)
    for log in (data_dir / "logs").iterdir():
        assert password not in log.read_text(errors="replace"), log
    # no secret on any command line (`ps` shows those to everyone); each child holds only its own
    for cmd, env in procs.values():
        for secret in (token, artifact_token, password):
            assert secret not in cmd, cmd
        if "detserve_worker" in cmd or "detserve_scheduler" in cmd:
            assert "DETSERVE_ADMIN_TOKEN" not in env, cmd
            assert env.get("DETSERVE_ARTIFACT_TOKEN") == (
                None if "detserve_scheduler" in cmd else artifact_token), cmd
    flower_env = next(env for cmd, env in procs.values() if "celery flower" in cmd)
    assert flower_env["FLOWER_BASIC_AUTH"] == f"admin:{token}"
    flower = f"http://127.0.0.1:{flower_port}/workers"
    wait_for(lambda: _answers(flower), 60, 0.3, what="flower to answer")
    assert requests.get(flower, timeout=10).status_code == 401
    assert requests.get(flower, auth=("admin", token), timeout=10).status_code == 200
    # everything in the data dir (database, Redis' files, models, logs, secrets) is private
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for path in [data_dir, *data_dir.rglob("*")]:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is {stat.S_IMODE(path.stat().st_mode):o}"
    assert any(p.parent.parent.name == "artifacts" for p in data_dir.rglob("*"))  # models were seen
    shm = Path(embedded_shm_dir(Settings(data_dir=data_dir).resolved()))
    assert shm.stat().st_uid == os.geteuid() and stat.S_IMODE(shm.stat().st_mode) == 0o700


def processes(data_dir: Path) -> dict[int, tuple[str, dict[str, str]]]:
    """This `detserve up`'s processes: their command lines and environments."""
    found = {}
    for line in leftovers(data_dir):
        pid = int(line.split(":")[0])
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        found[pid] = (cmd, dict(v.split("=", 1) for v in raw.split("\0") if "=" in v))
    return found


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code in (200, 401)
    except requests.RequestException:
        return False


@pytest.mark.parametrize("kind", ["open to others", "a link", "another user's"])
def test_up_refuses_a_shared_memory_dir_it_does_not_own(tmp_path, kind):
    # given the predictable shared-memory directory of this data dir, made by someone else
    data_dir = tmp_path / "data"
    shm = Path(embedded_shm_dir(Settings(data_dir=data_dir).resolved()))
    if kind == "a link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        shm.symlink_to(tmp_path / "elsewhere")
    else:
        shm.mkdir()
        shm.chmod(0o777 if kind == "open to others" else 0o700)
        if kind == "another user's":
            if os.geteuid() != 0:
                pytest.skip("making a directory of another user needs root")
            os.chown(shm, 65534, 65534)
    try:
        # when detserve up starts, it refuses at once, saying why, and starts nothing
        proc = subprocess.run(detserve_cmd("up", "--data-dir", str(data_dir), "--port",
                                           str(free_port())),
                              env=up_env(data_dir), capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert f"refusing the shared-memory directory {shm}" in proc.stderr, proc.stderr
        assert not leftovers(data_dir)
        assert shm.is_symlink() or shm.is_dir()  # nor is it removed: it is not ours
    finally:
        if shm.is_symlink():
            shm.unlink()
        else:
            shutil.rmtree(shm)


def test_auto_stop_survives_a_scheduler_killed_by_sigkill(tmp_path):
    # given detserve up with an hour of 4 s and a sweep every second
    data_dir, port = tmp_path / "data", free_port()
    proc = start_up(data_dir, port, tmp_path / "up.log", DETSERVE_AUTOSTOP_HOUR_SECONDS="4",
                    DETSERVE_SWEEP_SECONDS="1")
    try:
        api = ApiClient(f"http://127.0.0.1:{port}", (data_dir / "admin_token").read_text().strip())
        svc = api.post("/v1/services", json={"model": "demo-detector", "version": 1, "flavor": "cpu",
                                             "auto_stop": {"enabled": True, "hours": 1}}).json()
        running = api.wait_status(svc["id"], "Running")
        # when the scheduler is killed (holding the countdown) before stop_at
        scheduler = next(int(line.split(":")[0]) for line in leftovers(data_dir)
                         if "detserve_scheduler" in line)
        os.killpg(os.getpgid(scheduler), signal.SIGKILL)
        wait_for(lambda: "scheduler exited" in proc.tail(100_000), 20, what="scheduler restart")
        # then detserve up restarts it and the service still stops, by auto stop
        stopped = api.wait_status(svc["id"], "Stopped", timeout=30)
        events = api.get(f"/v1/services/{svc['id']}/events").json()["events"]
        assert [e["reason"] for e in events[-2:]] == ["auto_stop", "auto_stop"]
        assert stopped["running_seconds"] == pytest.approx(4.0, abs=0.1)
        assert running["auto_stop"]["stop_at"]
    finally:
        stop(proc, data_dir, port)
