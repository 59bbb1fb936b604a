"""`detserve up`: one command runs everything; Ctrl-C/SIGTERM leaves nothing behind; a restart
on the same data dir finds everything as it was, Running services running again."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
import requests
from api_client import ApiClient

from detserve.config import Settings
from detserve.inference.synthetic import CLASSES, scene
from detserve_launcher.supervisor import embedded_shm_dir
from support import Proc, child_env, detserve_cmd, free_port, wait_for

pytestmark = pytest.mark.slow


def start_up(data_dir: Path, port: int, log: Path, **env_extra: str) -> Proc:
    env = child_env(Settings(data_dir=data_dir).resolved())
    for name in ("DETSERVE_REDIS_URL", "DETSERVE_DATABASE_URL", "DETSERVE_ADMIN_TOKEN",
                 "DETSERVE_API_URL"):
        env.pop(name, None)  # the embedded default: its own Redis, SQLite
    env["DETSERVE_HEARTBEAT_SECONDS"] = "1"
    env.update(env_extra)
    proc = Proc("up", detserve_cmd("up", "--data-dir", str(data_dir), "--port", str(port)), env, log)
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
    data_dir, port = tmp_path / "data", free_port()
    proc = start_up(data_dir, port, tmp_path / "up1.log")
    try:
        token = (data_dir / "admin_token").read_text().strip()
        assert token in proc.tail(100_000)
        api = ApiClient(f"http://127.0.0.1:{port}", token)
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
