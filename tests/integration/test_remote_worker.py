"""A CPU worker on "another host": its own network namespace, reached over a veth pair whose
addresses this test chooses, its own /dev/shm (a private mount namespace) and its own data dir.
It reaches Redis, PostgreSQL (through a forwarder on the link) and the API (artifacts by hash,
verified) only over that link, serves beside a local worker, loses its link under load and
rejoins when the link comes back.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from werkzeug.serving import make_server

from api_helpers import AUTH, post_multipart, upload, wait_status
from conftest import as_config
from detserve.config import Settings
from detserve.service.demo import build_blob_detector
from faultkit import Forwarder, PrivateRedis, postgres_database
from support import ADMIN, Proc, blobs_image, child_env, detserve_cmd, wait_for

ARTIFACT_READER = "remote-artifact-reader"
PG_ADMIN = os.environ.get("DETSERVE_TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IMAGES = [blobs_image([("red", 40, 40, 90, 90)]), blobs_image([("green", 100, 60, 200, 160)]),
          blobs_image([("blue", 10, 200, 80, 300), ("red", 200, 20, 300, 120)])]
TIMEOUT = 5.0  # the prediction timeout: an answer lost with the link costs a caller this long


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)


def _namespaces_work() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"dsprobe{os.getpid()}"
    made = _run("ip", "netns", "add", probe)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    _run("ip", "netns", "del", probe)
    if _run("unshare", "-m", "true").returncode != 0:
        return "`unshare -m` fails here"
    return None


def _postgres() -> str | None:
    try:
        import psycopg

        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any failure means: no PostgreSQL to use
        return f"no PostgreSQL at {PG_ADMIN}: {exc}"
    return None


class Link:
    """A namespace and a veth pair: host side .1, namespace side .2 of a /30 nobody uses."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}"
        self.ns, self.host_if, self.ns_if = f"dsrw{tag}", f"dsh{tag}", f"dsn{tag}"
        used = _run("ip", "-o", "addr").stdout
        octet = next(o for o in range(os.getpid() % 200 + 20, 256) if f"10.213.{o}." not in used)
        self.host_ip, self.ns_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"

    def create(self) -> None:
        for cmd in (["ip", "netns", "add", self.ns],
                    ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if],
                    ["ip", "link", "set", self.ns_if, "netns", self.ns],
                    ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if],
                    ["ip", "link", "set", self.host_if, "up"],
                    ["ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.ns_ip}/30",
                     "dev", self.ns_if],
                    ["ip", "netns", "exec", self.ns, "ip", "link", "set", self.ns_if, "up"],
                    ["ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up"]):
            done = _run(*cmd)
            assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr}"

    def set(self, state: str) -> None:
        assert _run("ip", "link", "set", self.host_if, state).returncode == 0

    def close(self) -> None:
        for pid in _run("ip", "netns", "pids", self.ns).stdout.split():
            try:
                os.kill(int(pid), 9)  # only processes this test started live in its namespace
            except ProcessLookupError:
                pass
        _run("ip", "link", "del", self.host_if)
        _run("ip", "netns", "del", self.ns)


@pytest.fixture()
def database() -> Iterator[str]:
    with postgres_database(PG_ADMIN) as name:
        yield name


def _heartbeats(url: str) -> set[str]:
    members = redis.Redis.from_url(url).zrangebyscore("detserve:workers:cpu", time.time() - 3, "+inf")
    return {m.decode() for m in members}


class Callers:
    """Bounded clients, each sending its own image and judging every answer by its calm one."""

    def __init__(self, client_factory: Any, sid: str, calm: list[Any]) -> None:
        self.factory, self.sid, self.calm = client_factory, sid, calm
        self.log: list[tuple[float, int, int, bool]] = []  # (time, caller, status, right)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(len(calm))]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        client = self.factory()
        for _ in range(5000):
            if self.stop.is_set():
                return
            resp = post_multipart(client, f"/v1/services/{self.sid}/predict",
                                  {"images": (io.BytesIO(IMAGES[i]), "a.png")}, AUTH)
            right = resp.status_code == 200 and _boxes(resp.json) == self.calm[i]
            self.log.append((time.monotonic(), i, resp.status_code, right))

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=TIMEOUT + 10)

    def good_after(self, since: float) -> list[float]:
        return sorted(t for t, _, status, right in self.log if t >= since and right)


def _boxes(body: dict[str, Any]) -> Any:
    return (body["detection_classes"], body["detection_boxes"], body["detection_scores"])


def test_a_worker_in_another_network_namespace_serves_loses_its_link_and_rejoins(tmp_path: Path,
                                                                                database: str):
    problem = _namespaces_work() or _postgres()
    if problem:
        pytest.skip(problem)
    link, procs, closers = Link(), [], []
    try:
        # given Redis, PostgreSQL (forwarded) and the API, reachable from the namespace only
        # through the link's host address
        link.create()
        server = PrivateRedis(tmp_path, also_bind=(link.host_ip,))
        server.start()
        closers.append(server.stop)
        pg = Forwarder(link.host_ip, 5432)
        closers.append(pg.close)
        local = Settings(data_dir=tmp_path / "local", redis_url=server.url, admin_token=ADMIN,
                         artifact_token=ARTIFACT_READER,
                         database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
                         heartbeat_seconds=1.0, predict_timeout=TIMEOUT, worker_concurrency=2,
                         shm_dir="").resolved()
        from detserve.store import Store
        from detserve_api import create_app

        store = Store(local.database_url)
        store.migrate()
        closers.append(store.dispose)
        app = create_app(as_config(local), store=store)
        http = make_server(link.host_ip, 0, app, threaded=True)
        threading.Thread(target=http.serve_forever, daemon=True).start()
        closers.append(http.shutdown)
        remote = Settings(
            # the worker host holds no admin token: only the one that reads artifacts
            data_dir=tmp_path / "remote", artifact_token=ARTIFACT_READER, heartbeat_seconds=1.0,
            redis_url=f"redis://{link.host_ip}:{server.port}/0",
            database_url=f"postgresql+psycopg://postgres@{link.host_ip}:{pg.port}/{database}",
            api_url=f"http://{link.host_ip}:{http.server_port}", predict_timeout=TIMEOUT,
            worker_concurrency=2, shm_dir="").resolved()
        shm = "mount -t tmpfs -o size=64m tmpfs /dev/shm && exec \"$@\""
        cmd = ["ip", "netns", "exec", link.ns, "unshare", "-m", "--propagation", "private",
               "sh", "-c", shm, "sh", *detserve_cmd("worker", "--flavor", "cpu")]
        (tmp_path / "remote").mkdir()
        far = Proc("remote-worker", cmd, child_env(remote), tmp_path / "remote-worker.log").start()
        procs.append(far)
        wait_for(lambda: _heartbeats(server.url), 60, what=lambda: f"the remote worker:\n{far.tail()}")
        (remote_name,) = _heartbeats(server.url)
        client = app.test_client()

        # when it is the only CPU worker, it deploys (artifact fetched from the API) and answers
        assert upload(client, "far", build_blob_detector().SerializeToString()).status_code == 201
        created = client.post("/v1/services", headers=AUTH, json={
            "model": "far", "version": 1, "flavor": "cpu", "auto_stop": {"enabled": False, "hours": 1}})
        assert created.status_code == 202, created.json
        sid = wait_status(client, created.json["id"], "Running", timeout=60)["id"]
        assert any((tmp_path / "remote" / "artifacts").rglob("*")), "fetched into its own data dir"
        calm = []
        for image in IMAGES:
            resp = post_multipart(client, f"/v1/services/{sid}/predict",
                                  {"images": (io.BytesIO(image), "a.png")}, AUTH)
            assert resp.status_code == 200, resp.json
            calm.append(_boxes(resp.json))
        assert len({str(c) for c in calm}) == len(IMAGES), "different images, different answers"

        # and beside a local worker, under load, its link is cut
        near = Proc("local-worker", detserve_cmd("worker", "--flavor", "cpu"), child_env(local),
                    tmp_path / "local-worker.log").start()
        procs.append(near)
        wait_for(lambda: len(_heartbeats(server.url)) == 2, 60, what=lambda: near.tail())
        callers = Callers(app.test_client, sid, calm)
        callers.start()
        time.sleep(3.0)
        cut = time.monotonic()
        link.set("down")
        time.sleep(3 * TIMEOUT)
        assert remote_name not in _heartbeats(server.url), "the link is really cut"
        # then callers keep getting answers from the local worker within a few seconds
        good = callers.good_after(cut)
        assert good and good[0] - cut < 4.0, f"first good answer {good[:1]} after cut {cut}"
        gaps = [b - a for a, b in zip([cut, *good], good, strict=False)]
        assert max(gaps) < TIMEOUT + 2.0, f"a {max(gaps):.1f} s gap without answers"

        # and when the link comes back the remote worker rejoins and serves alone
        link.set("up")
        wait_for(lambda: remote_name in _heartbeats(server.url), 60, what="the remote heartbeat")
        callers.finish()
        near.stop()
        procs.remove(near)
        back = time.monotonic()
        callers2 = Callers(app.test_client, sid, calm)
        callers2.start()
        wait_for(lambda: callers2.good_after(back), 30, what="an answer from the remote worker")
        time.sleep(2.0)
        callers2.finish()
        log = callers.log + callers2.log
        print(f"remote worker: {len(callers.log)} calls with both workers and the cut "
              f"({sum(1 for e in callers.log if e[0] >= cut and e[2] == 504)} timed out after it), "
              f"{len(callers2.log)} with the remote worker alone after it rejoined")
        wrong = [entry for entry in log if entry[2] == 200 and not entry[3]]
        assert not wrong, f"{len(wrong)} wrong answers"
        assert all(status in (200, 503, 504) for _, _, status, _ in log), \
            sorted({status for _, _, status, _ in log})
    finally:
        for proc in procs:
            proc.stop(timeout=10)
        for close in reversed(closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - clean up the rest whatever fails
                pass
        link.close()
