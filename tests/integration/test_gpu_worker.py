"""The gpu flavor: start-up refusal without a GPU, availability by heartbeat, and a real GPU
worker process running the TensorRT backend against the fake tensorrt/pycuda modules."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import redis

import fakes
from api_helpers import AUTH, predict, task_outcome, upload, wait_status
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


def batch_log(settings):
    """The file the fake engine writes each run's batch size to."""
    return settings.data_dir / "fake-trt-batches.log"


def batches_run(settings) -> list[int]:
    path = batch_log(settings)
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.fixture(params=[10], ids=lambda m: f"tensorrt{m}")
def fake_gpu_worker(settings, request):
    """A real GPU worker process on the fake TensorRT of the major in `request.param`."""
    env = child_env(settings, DETSERVE_FAKE_GPU="1", DETSERVE_TRT_PROFILE="1,4,8",
                    DETSERVE_BATCH_WINDOW_MS="20", DETSERVE_FAKE_TRT_RUN_MS="30",
                    DETSERVE_FAKE_TRT_BATCH_LOG=str(batch_log(settings)),
                    DETSERVE_FAKE_TRT_VERSION=fakes.VERSIONS[request.param])
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
    runs_before = len(batches_run(settings))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)] * 4
    tasks = [predict(client, sid, image_bytes(64, 64, color=c), route="predictions").json["task_id"]
             for c in colours]
    results = [task_outcome(client, t) for t in tasks]
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
    # and the batcher really ran them together: some engine run held more than one image
    batches = batches_run(settings)[runs_before:]
    assert batches and max(batches) > 1, batches
    assert "reusing cached TensorRT engine" not in fake_gpu_worker.tail(20000)
    # a redeploy reuses the engine built the first time
    client.post(f"/v1/services/{sid}/stop", headers=AUTH)
    client.post(f"/v1/services/{sid}/start", headers=AUTH)
    wait_status(client, sid, "Running")
    assert "reusing cached TensorRT engine" in fake_gpu_worker.tail(20000)


def _variant(model: bytes, tag: str) -> bytes:
    """The same model with other bytes, so no engine for it is cached yet."""
    proto = onnx.load_from_string(model)
    proto.metadata_props.add(key="variant", value=tag)
    return proto.SerializeToString()


def _deploy_gpu(client, name: str, model: bytes) -> str:
    resp = upload(client, name, model)
    assert resp.status_code == 201, resp.json
    created = client.post("/v1/services", json={"model": name, "version": resp.json["version"],
                                                "flavor": "gpu"}, headers=AUTH)
    assert created.status_code == 202, created.json
    return str(created.json["id"])


def test_static_engine_answers_concurrent_requests_each_with_its_own(client, fake_gpu_worker):
    # given a static-batch model (batch 1: no batcher) on the gpu flavor, worker concurrency 8
    sid = _deploy_gpu(client, "gpu-static", dynamic_batch_model(batch=1))
    running = wait_status(client, sid, "Running")
    assert running["engine"]["max_batch"] == 1 and running["engine"]["contexts"] == 8
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 40, 0)] * 6

    def sync(colour):
        return colour, predict(client.application.test_client(), sid, image_bytes(64, 64, color=colour))

    # when 24 different images are sent at once, then each gets its own image's answer
    with ThreadPoolExecutor(12) as pool:
        for colour, resp in pool.map(sync, colours):
            assert resp.status_code == 200, resp.json
            assert set(resp.json["detection_classes"]) == {f"c{int(np.argmax(colour))}"}


@pytest.mark.parametrize("fake_gpu_worker", [10, 11], indirect=True, ids=["tensorrt10", "tensorrt11"])
def test_engine_build_progress_and_the_precision_built(client, fake_gpu_worker, request):
    major = request.node.callspec.params["fake_gpu_worker"]
    sid = _deploy_gpu(client, f"gpu-progress-{major}", _variant(dynamic_batch_model(), "unbuilt"))
    running = wait_status(client, sid, "Running")
    steps = running["deploy_steps"]
    assert [s["name"] for s in steps] == ["queued", "fetching", "loading", "building_engine",
                                          "warming_up", "ready"]
    build = steps[3]
    # TensorRT 10 builds the fp16 asked for; 11 builds what the fp32 graph holds, and says so
    precision = "fp16" if major == 10 else "fp32"
    assert build["detail"] == f"{precision}, batch 1/4/8"
    assert build["progress"] == 90  # the builder's phases ran to their end
    assert running["engine"] == {"backend": "tensorrt", "version": fakes.VERSIONS[major],
                                 "precision": precision, "max_batch": 8, "contexts": 1}
    # a restart of the service reuses the engine: no build step, the same precision reported
    client.post(f"/v1/services/{sid}/stop", headers=AUTH)
    client.post(f"/v1/services/{sid}/start", headers=AUTH)
    again = wait_status(client, sid, "Running")
    assert "building_engine" not in [s["name"] for s in again["deploy_steps"]]
    assert again["engine"]["precision"] == precision


def test_a_failed_build_says_so_in_the_builders_words(client, fake_gpu_worker):
    proto = onnx.load_from_string(dynamic_batch_model())
    proto.metadata_props.add(key=fakes.BUILD_ERROR_KEY, value=(
        "[optimizer.cpp::computeCosts::3869] Error Code 10: /usr/src/tensorrt/x.cpp: "
        "could not find any implementation for node Concat"))
    sid = _deploy_gpu(client, "gpu-unbuildable", proto.SerializeToString())
    failed = wait_status(client, sid, "Failed")
    assert failed["error"].startswith("building TensorRT engine failed: TensorRT could not build "
                                      "an engine for this model: [optimizer.cpp")
    assert "could not find any implementation for node Concat" in failed["error"]
    assert "/usr/src" not in failed["error"]
    assert failed["phase"]["name"] == "building_engine" and failed["phase"]["failed"]
