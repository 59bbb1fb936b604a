"""The gpu flavor: start-up refusal without a GPU, availability by heartbeat, and a real GPU
worker process running the TensorRT backend against the fake tensorrt/pycuda modules."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis

from api_helpers import AUTH, predict, upload, wait_status
from detserve.monitoring import heartbeats
from support import (
    ROOT,
    Proc,
    child_env,
    detserve_cmd,
    dynamic_batch_model,
    heartbeat,
    image_bytes,
    wait_for,
    wait_heartbeat,
)


def test_gpu_worker_refuses_to_start_without_a_gpu(settings):
    env = child_env(settings)
    env.pop("DETSERVE_FAKE_GPU", None)
    started = time.monotonic()
    proc = subprocess.run(detserve_cmd("worker", "--flavor", "gpu"), env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3
    assert "cannot start a GPU worker" in proc.stderr and "TensorRT" in proc.stderr
    assert time.monotonic() - started < 30


def available(client):
    return {f["id"]: f["available"] for f in client.get("/v1/flavors", headers=AUTH).json["flavors"]}


def test_flavor_availability_follows_heartbeats(client, settings):
    # no gpu worker: a gpu worker of an earlier test has stopped beating within three periods
    wait_for(lambda: not available(client)["gpu"], 10 * settings.heartbeat_seconds,
             what="no gpu heartbeat")
    flavors = {f["id"]: f for f in client.get("/v1/flavors", headers=AUTH).json["flavors"]}
    assert flavors["cpu"]["available"] and not flavors["gpu"]["available"]
    assert flavors["cpu"]["price_per_hour"] == settings.prices["cpu"]
    with heartbeat(settings, "gpu", "gpu@test-host"):
        assert available(client)["gpu"]
    with heartbeat(settings, "gpu", "gpu@test-host", now=time.time() - 10 * settings.heartbeat_seconds):
        assert not available(client)["gpu"]
    assert not available(client)["gpu"]


@pytest.fixture()
def fake_gpu_worker(settings):
    env = child_env(settings, DETSERVE_FAKE_GPU="1", DETSERVE_TRT_PROFILE="1,4,8",
                    DETSERVE_BATCH_WINDOW_MS="20")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "fakegpu"), env["PYTHONPATH"]])
    log = settings.data_dir / "logs" / "worker-gpu.log"
    proc = Proc("worker-gpu", detserve_cmd("worker", "--flavor", "gpu", "--concurrency", "8"), env, log)
    proc.start()
    try:
        wait_heartbeat(settings, "gpu", proc)
        yield proc
    finally:
        proc.stop()
        # a worker killed before it said goodbye leaves its beat: later tests must see no gpu
        redis.Redis.from_url(settings.redis_url).delete(heartbeats.KEY.format(flavor="gpu"))


def test_deploy_and_concurrent_predictions_on_the_gpu_flavor(client, settings, fake_gpu_worker):
    # given a dynamic-batch model deployed on the gpu flavor
    resp = upload(client, "gpu-model", dynamic_batch_model())
    created = client.post("/v1/services", json={"model": "gpu-model", "version": resp.json["version"],
                                                "flavor": "gpu"}, headers=AUTH)
    assert created.status_code == 202, created.json
    wait_status(client, created.json["id"], "Running")
    sid = created.json["id"]
    # when images of different colours are sent at once (so they can share batches)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)] * 4
    tasks = [predict(client, sid, image_bytes(64, 64, color=c), route="predictions").json["task_id"]
             for c in colours]
    results = [wait_for(lambda t=t: (r := client.get(f"/v1/predictions/{t}", headers=AUTH).json)
                        ["status"] in ("SUCCESS", "FAILURE") and r, 30, what="gpu result")
               for t in tasks]
    # then each task gets its own image's answer
    for colour, body in zip(colours, results, strict=True):
        assert body["status"] == "SUCCESS", body
        expected = f"c{int(np.argmax(colour))}"
        assert set(body["result"]["detection_classes"]) == {expected}
    # and sync predictions sent at once (lane threads, one batcher) get their own answers too
    def sync(colour):
        return colour, predict(client.application.test_client(), sid, image_bytes(64, 64, color=colour))

    with ThreadPoolExecutor(len(colours)) as pool:
        for colour, resp in pool.map(sync, colours):
            assert resp.status_code == 200, resp.json
            assert set(resp.json["detection_classes"]) == {f"c{int(np.argmax(colour))}"}
    assert "reusing cached TensorRT engine" not in fake_gpu_worker.tail(20000)
    # a redeploy reuses the engine built the first time
    client.post(f"/v1/services/{sid}/stop", headers=AUTH)
    client.post(f"/v1/services/{sid}/start", headers=AUTH)
    wait_status(client, sid, "Running")
    assert "reusing cached TensorRT engine" in fake_gpu_worker.tail(20000)
