"""Background listeners outlive a Redis restart: a live worker and scheduler, a Redis of the test's
own killed and started again empty (as an embedded Redis comes back), and the stack serves again.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api_helpers import AUTH, post_multipart, running_service, task_outcome
from conftest import Stack
from detserve.config import Settings
from detserve.service.demo import build_blob_detector
from faultkit import PrivateRedis
from support import ADMIN, blobs_image, wait_for, wait_heartbeat

IMAGE = blobs_image([("red", 40, 40, 90, 90)])


@pytest.fixture()
def restartable(tmp_path: Path) -> Iterator[Any]:
    server = PrivateRedis(tmp_path)
    server.start()
    settings = Settings(data_dir=tmp_path / "data", redis_url=server.url, admin_token=ADMIN,
                        heartbeat_seconds=1.0, sweep_seconds=1.0, predict_timeout=10.0,
                        worker_concurrency=1, shm_dir=str(tmp_path / "shm")).resolved()
    stack = Stack(settings)
    try:
        yield stack, server
    finally:
        stack.close()
        server.stop()


def _async_answer(client: Any, sid: str, timeout: float = 30) -> dict[str, Any]:
    submitted = post_multipart(client, f"/v1/services/{sid}/predictions",
                               {"images": (io.BytesIO(IMAGE), "a.png")}, AUTH)
    assert submitted.status_code == 202, submitted.json
    return task_outcome(client, submitted.json["task_id"], timeout)


def _restart(server: PrivateRedis) -> None:
    server.proc.kill()  # type: ignore[union-attr]
    time.sleep(1.0)  # long enough for every listener to notice
    server.start()


def test_a_worker_serves_again_after_redis_restarts_under_it(restartable):
    stack, server = restartable
    client = stack.app.test_client()
    sid = running_service(client, "restart", build_blob_detector().SerializeToString(),
                          auto_stop={"enabled": False, "hours": 1})["id"]
    calm = _async_answer(client, sid)
    assert calm["status"] == "SUCCESS", calm
    # when Redis restarts, empty, under the live worker and scheduler
    _restart(server)
    # then heartbeats resume, async predictions are answered as before
    wait_heartbeat(stack.settings, "cpu", stack.procs["worker-cpu"], timeout=30)
    wait_heartbeat(stack.settings, "scheduler", stack.procs["scheduler"], timeout=30)
    after = _async_answer(client, sid, timeout=60)
    assert after["status"] == "SUCCESS" and after["result"]["detection_boxes"] == \
        calm["result"]["detection_boxes"], after
    # and the worker's unload listener is subscribed again: a stop unloads the model there
    log = stack.procs["worker-cpu"]
    unloads = log.tail(10**6).count("unloaded model version")
    wait_for(lambda: client.post(f"/v1/services/{sid}/stop", headers=AUTH).status_code == 200, 20)
    wait_for(lambda: log.tail(10**6).count("unloaded model version") > unloads, 30,
             what="the worker to unload the stopped service's model")


def test_sync_predictions_are_answered_after_redis_restarts(restartable):
    """The sync lane's own reconnection (shared/detserve/lane, another change's area)."""
    stack, server = restartable
    client = stack.app.test_client()
    sid = running_service(client, "restart-sync", build_blob_detector().SerializeToString(),
                          auto_stop={"enabled": False, "hours": 1})["id"]

    def predict() -> Any:
        return post_multipart(client, f"/v1/services/{sid}/predict",
                              {"images": (io.BytesIO(IMAGE), "a.png")}, AUTH)

    calm = predict()
    assert calm.status_code == 200, calm.json
    _restart(server)
    wait_heartbeat(stack.settings, "cpu", stack.procs["worker-cpu"], timeout=30)
    codes = []

    def answered() -> bool:
        resp = predict()
        codes.append(resp.status_code)
        assert resp.status_code != 500, resp.json
        return resp.status_code == 200 and resp.json["detection_boxes"] == calm.json["detection_boxes"]

    wait_for(answered, 60, 0.2, what=lambda: f"a sync answer after the restart (codes {codes})")


