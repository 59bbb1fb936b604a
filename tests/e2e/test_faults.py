"""Faults under load, on a real `detserve up` (embedded Redis, SQLite, API under gunicorn, CPU
worker, scheduler): SIGKILL the CPU worker, SIGSTOP/SIGCONT Redis, SIGKILL Redis (detserve up
restarts it from its append-only file), SIGKILL the scheduler, while bounded clients send sync
predictions of their own scenes and one sends async ones.

Asserted: 0 wrong answers (each client's answers against its calm one), 0 answers of 500, 0
accepted async tasks that never end, a good answer again within a few seconds of each fault, and
a service's auto stop exactly once and on time.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from api_client import ApiClient
from test_up import leftovers, start_up, stop

from detserve.inference.synthetic import scene
from support import free_port, wait_for

pytestmark = pytest.mark.slow

HOUR = 40.0  # the auto-stop "hour": the timer service stops while the faults are over
RECOVERY = 10.0  # a good answer again within this many seconds of each fault (loaded 2 cores)
SLACK = 3.0  # auto stop on time: stop_at plus the sweep period and scheduling on this machine


@dataclass
class Record:
    # (sent, answered, client, status, right) of every sync call
    sync: list[tuple[float, float, int, int, bool]] = field(default_factory=list)
    tasks: dict[str, str] = field(default_factory=dict)  # accepted task id -> final status
    submitted: dict[str, float] = field(default_factory=dict)  # accepted task id -> when
    statuses: list[int] = field(default_factory=list)  # every HTTP status any client got


class Load:
    """Three sync clients with their own scenes, one async client; bounded in count and time."""

    def __init__(self, base: str, service: dict[str, Any]) -> None:
        self.base, self.service = base, service
        self.images = [scene(seed).encode("JPEG") for seed in (11, 12, 13)]
        self.calm: list[Any] = []
        self.record = Record()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._sync, args=(i,), daemon=True)
                        for i in range(len(self.images))]
        self.threads.append(threading.Thread(target=self._async, daemon=True))

    def _post(self, http: requests.Session, route: str, image: bytes) -> requests.Response | None:
        try:
            return http.post(f"{self.base}/v1/services/{self.service['id']}/{route}",
                             files={"images": ("a.jpg", image)},
                             headers={"X-Service-Key": self.service["key"]}, timeout=30)
        except requests.RequestException:
            return None  # the connection broke: counted as no answer, never as a right one

    def calm_answers(self) -> None:
        with requests.Session() as http:
            for image in self.images:
                resp = self._post(http, "predict", image)
                assert resp is not None and resp.status_code == 200, resp and resp.text
                self.calm.append(_answer(resp.json()))
        assert len({str(a) for a in self.calm}) == len(self.images), "scenes must differ"

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _sync(self, i: int) -> None:
        with requests.Session() as http:
            for _ in range(20_000):
                if self.stop.is_set():
                    return
                sent = time.monotonic()
                resp = self._post(http, "predict", self.images[i])
                status = resp.status_code if resp is not None else 0
                right = status == 200 and resp is not None and _answer(resp.json()) == self.calm[i]
                self.record.statuses.append(status)
                self.record.sync.append((sent, time.monotonic(), i, status, right))
                if status != 200:
                    time.sleep(0.2)

    def _async(self) -> None:
        with requests.Session() as http:
            for _ in range(2_000):
                if self.stop.is_set():
                    return
                resp = self._post(http, "predictions", self.images[0])
                if resp is None or resp.status_code != 202:
                    self.record.statuses.append(resp.status_code if resp is not None else 0)
                    time.sleep(0.2)
                    continue
                task_id = resp.json()["task_id"]
                self.record.tasks[task_id] = "PENDING"
                self.record.submitted[task_id] = time.monotonic()
                self.record.tasks[task_id] = self._follow(http, task_id)

    def _follow(self, http: requests.Session, task_id: str, limit: float = 60.0) -> str:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                resp = http.get(f"{self.base}/v1/predictions/{task_id}",
                                headers={"X-Service-Key": self.service["key"]}, timeout=30)
            except requests.RequestException:
                time.sleep(0.2)
                continue
            self.record.statuses.append(resp.status_code)
            if resp.status_code == 200 and resp.json()["status"] in ("SUCCESS", "FAILURE"):
                body = resp.json()
                if body["status"] == "SUCCESS" and _answer(body["result"]) != self.calm[0]:
                    return "WRONG"
                return str(body["status"])
            time.sleep(0.2)
        return "NEVER ENDED"

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)

    def first_good_after(self, since: float) -> float | None:
        """Seconds from `since` to the first right answer to a call sent after it."""
        good = [done for sent, done, _, _, right in self.record.sync if sent >= since and right]
        return min(good) - since if good else None

    def longest_gap(self) -> float:
        """The longest time without a right answer while the load ran."""
        done = sorted(d for _, d, _, _, right in self.record.sync if right)
        return max((b - a for a, b in zip(done, done[1:], strict=False)), default=0.0)


def _answer(body: dict[str, Any]) -> Any:
    return (body["detection_classes"], body["detection_boxes"], body["detection_scores"])


def _group_of(data_dir: Path, marker: str) -> int:
    """The process group of the child whose command line has `marker` (waiting for detserve up
    to start it again, should it be restarting)."""
    pids = wait_for(lambda: [int(line.split(":")[0]) for line in leftovers(data_dir)
                             if marker in line], 30, 0.2, what=f"a process with {marker}")
    return os.getpgid(pids[0])  # type: ignore[index]


def _redis_url(data_dir: Path) -> str:
    worker = next(int(line.split(":")[0]) for line in leftovers(data_dir)
                  if "detserve_scheduler" in line)
    env = dict(item.split("=", 1) for item in Path(f"/proc/{worker}/environ").read_text()
               .split("\0") if "=" in item)
    return env["DETSERVE_REDIS_URL"]


def _where(data_dir: Path, task_id: str) -> dict[str, Any]:
    """What Redis holds of a task (for the failure message)."""
    import redis

    r = redis.Redis.from_url(_redis_url(data_dir))
    return {"image_ttl": r.ttl(f"detserve:image:{task_id}"),
            "owner": r.get(f"detserve:task:{task_id}"),
            "meta": r.get(f"celery-task-meta-{task_id}"),
            "claim": r.hget("detserve:inflight", task_id),
            "queued": task_id.encode() in b"".join(r.lrange("cpu", 0, -1)),
            "unacked": any(task_id.encode() in v for v in r.hvals("unacked"))}


def _redis_group(data_dir: Path) -> int:
    """Redis rewrites its process title (`redis-server 127.0.0.1:PORT`), arguments and
    environment gone: find it by the port the other children were given."""
    url = urlsplit(_redis_url(data_dir))  # redis://:password@host:port/0
    address = f"{url.hostname}:{url.port}"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            continue
        if "redis-server" in cmdline and address in cmdline:
            return os.getpgid(int(pid))
    raise AssertionError(f"no redis-server on {address}")


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_faults_under_load(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    proc = start_up(data_dir, port, tmp_path / "up.log", DETSERVE_AUTOSTOP_HOUR_SECONDS=str(HOUR),
                    DETSERVE_SWEEP_SECONDS="1", DETSERVE_PREDICT_TIMEOUT="5")
    load: Load | None = None
    try:
        api = ApiClient(f"http://127.0.0.1:{port}", (data_dir / "admin_token").read_text().strip())
        served = api.post("/v1/services", json={"model": "demo-detector", "version": 1,
                                                "flavor": "cpu", "name": "load",
                                                "auto_stop": {"enabled": False, "hours": 1}}).json()
        timer = api.post("/v1/services", json={"model": "demo-detector", "version": 1,
                                               "flavor": "cpu", "name": "timer",
                                               "auto_stop": {"enabled": True, "hours": 1}}).json()
        api.wait_status(served["id"], "Running")
        stop_at = _ts(api.wait_status(timer["id"], "Running")["auto_stop"]["stop_at"])
        load = Load(api.base, served)
        load.calm_answers()
        load.start()
        time.sleep(3.0)

        def kill(marker: str) -> Callable[[], None]:
            return lambda: os.killpg(_group_of(data_dir, marker), signal.SIGKILL)

        def hang_redis() -> None:
            group = _redis_group(data_dir)
            os.killpg(group, signal.SIGSTOP)
            time.sleep(3.0)
            os.killpg(group, signal.SIGCONT)

        faults: list[tuple[str, Callable[[], None]]] = [
            ("SIGKILL the CPU worker", kill("detserve_worker_cpu")),
            ("SIGSTOP Redis for 3 s", hang_redis),
            ("SIGKILL Redis (restarted by detserve up)",
             lambda: os.killpg(_redis_group(data_dir), signal.SIGKILL)),
            ("SIGKILL the scheduler", kill("detserve_scheduler")),
        ]
        recovered: dict[str, float | None] = {}
        at: dict[str, float] = {}
        for name, fault in faults:
            at[name] = time.monotonic()
            fault()
            after = time.monotonic()
            wait_for(lambda a=after: load.first_good_after(a) is not None, RECOVERY + 20, 0.1,
                     what=f"a good answer after: {name}")
            recovered[name] = load.first_good_after(after)
            time.sleep(2.0)
        time.sleep(2.0)
        load.finish()

        # then: nothing wrong, no 500, every accepted async task ended, quick recovery
        sync = load.record.sync
        wrong = [r for r in sync if r[3] == 200 and not r[4]]
        wrong_tasks = {t: s for t, s in load.record.tasks.items() if s in ("WRONG", "NEVER ENDED", "PENDING")}
        summary = (f"{len(sync)} sync calls ({sum(r[4] for r in sync)} right, longest gap "
                   f"{load.longest_gap():.1f} s), "
                   f"{len(load.record.tasks)} async tasks, statuses "
                   f"{sorted(set(load.record.statuses))}, recovery s {recovered}")
        print(summary)
        assert not wrong, f"wrong answers: {wrong[:5]} ({summary})"
        assert 500 not in load.record.statuses, summary
        assert not wrong_tasks, (
            f"async tasks that never ended or were wrong: {wrong_tasks}, submitted at "
            f"{ {t: load.record.submitted[t] for t in wrong_tasks} }, faults at {at}; in Redis: "
            f"{ {t: _where(data_dir, t) for t in wrong_tasks} }")
        assert all(v is not None and v < RECOVERY for v in recovered.values()), summary

        # and the timer service stopped itself exactly once, on time
        stopped = api.wait_status(timer["id"], "Stopped", timeout=max(10.0, stop_at - time.time() + 15))
        events = api.get(f"/v1/services/{timer['id']}/events").json()["events"]
        autos = [e for e in events if e["reason"] == "auto_stop"]
        assert [e["to"] for e in autos] == ["Stopping", "Stopped"], events
        assert stop_at - 0.5 <= _ts(autos[0]["at"]) <= stop_at + SLACK, (autos, stop_at)
        assert stopped["running_seconds"] == pytest.approx(HOUR, abs=0.5)
    finally:
        if load is not None:
            load.finish()
        stop(proc, data_dir, port)
