"""Service lifecycle races (issue 13), each provoked on purpose.

The ModelHost and deploy races run a real ModelHost (ONNX Runtime, a real SQLite store and
artifact store) in this process, with a backend that is slow where the race needs a window; the
bus is a recorder that unloads as the worker's listener would. The repair races run real worker
and scheduler processes and SIGKILL the worker mid-task.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from onnx import TensorProto, helper, numpy_helper

from api_helpers import AUTH, deploy, post_multipart, task_outcome, upload, wait_status
from conftest import Stack, make_settings
from detserve.backends.onnxruntime import OnnxRuntimeBackend
from detserve.config import Settings
from detserve.errors import Unavailable
from detserve.inference.batching import Batcher
from detserve.inference.host import ModelHost
from detserve.monitoring import heartbeats
from detserve.processing import headers as images
from detserve.processing.headers import KEEP_SECONDS
from detserve.service import deployments, status
from detserve.service.artifacts import ArtifactStore
from detserve.service.demo import build_blob_detector
from detserve.service.versions import register_version
from detserve.store import Service, Store, utcnow
from support import _finish, blobs_image, dynamic_batch_model, wait_for

IMAGE = blobs_image([("red", 40, 40, 90, 90)])


class SlowBackend(OnnxRuntimeBackend):
    """ONNX Runtime with a wide window in loading and inference, counting what it builds."""

    load_delay = 0.0
    infer_delay = 0.0
    built: list[SlowBackend] = []

    @classmethod
    def from_package(cls, onnx_bytes: bytes, spec: dict[str, Any], **opts: Any) -> SlowBackend:
        time.sleep(cls.load_delay)
        backend = super().from_package(onnx_bytes, spec, **opts)
        cls.built.append(backend)  # type: ignore[arg-type]
        return backend  # type: ignore[return-value]

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        time.sleep(self.infer_delay)
        return super().infer(batch)

    @property
    def open(self) -> bool:
        return self.session is not None


class BatchingSlowBackend(SlowBackend):
    max_batch = 4


class RecordingBus:
    """The Bus protocol; an unload reaches `host` as the worker's unload listener would."""

    def __init__(self) -> None:
        self.host: ModelHost | None = None
        self.sent: list[tuple[str, Any]] = []

    def deploy(self, service_id: str, flavor: str) -> None:
        self.sent.append(("deploy", service_id))

    def countdown(self, service_id: str, token: str, eta: datetime) -> None:
        self.sent.append(("countdown", (service_id, token, eta)))

    def revoke(self, token: str) -> None:
        self.sent.append(("revoke", token))

    def unload(self, version_id: int) -> None:
        self.sent.append(("unload", version_id))
        if self.host is not None:
            self.host.drop(version_id)


@pytest.fixture()
def world(tmp_path: Path) -> Any:
    store = Store(f"sqlite:///{tmp_path / 'races.db'}")
    store.migrate()
    bus = RecordingBus()
    rt = deployments.Runtime(store, ArtifactStore(tmp_path / "artifacts"), bus, 3600.0)
    settings = Settings(data_dir=tmp_path, predict_timeout=10.0).resolved()
    SlowBackend.load_delay, SlowBackend.infer_delay, SlowBackend.built = 0.0, 0.0, []

    def host(backend: type[SlowBackend] = SlowBackend, **overrides: Any) -> ModelHost:
        bus.host = ModelHost(rt, backend, Settings(**{**settings.__dict__, **overrides}))
        return bus.host

    def version(data: bytes | None = None) -> Any:
        return register_version(rt, "race", data or build_blob_detector().SerializeToString(),
                                None, status.SUCCESSFUL, max_bytes=50 * 2**20)

    yield type("World", (), {"rt": rt, "bus": bus, "host": staticmethod(host),
                             "version": staticmethod(version)})
    store.dispose()


def _open(backends: list[SlowBackend]) -> int:
    return sum(b.open for b in backends)


# ---- ModelHost ------------------------------------------------------------------------------


def test_two_first_requests_load_the_version_once(world):
    # given a version whose load takes a while
    host, v = world.host(), world.version()
    SlowBackend.load_delay = 0.5
    # when two first requests arrive together
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: host.detect(v.id, IMAGE).classes, range(2)))
    # then both are answered from one load
    assert answers[0] == answers[1] and set(answers[0]) == {"red"}
    assert len(SlowBackend.built) == 1


def test_loading_a_cached_version_again_leaks_nothing_and_eviction_closes(world):
    host = world.host(model_cache_size=1)
    v1, v2 = world.version(), world.version()
    host.load(v1)
    host.load(v1)  # a second deploy of the same version in this process
    assert _open(SlowBackend.built) == 1, "a replaced model must be closed (or reused)"
    host.load(v2)  # evicts v1
    assert _open(SlowBackend.built) == 1 and host.cached() == [v2.id]
    host.drop(v2.id)
    assert _open(SlowBackend.built) == 0


@pytest.mark.parametrize("backend", [SlowBackend, BatchingSlowBackend])
def test_unload_while_predictions_are_in_flight(world, backend):
    # given predictions that take a while, running on a loaded version
    host = world.host(backend)
    v = world.version(None if backend is SlowBackend else dynamic_batch_model())
    host.load(v)
    backend.infer_delay = 0.3
    errors: list[BaseException] = []

    def call(_: int) -> str:
        try:
            return str(host.detect(v.id, IMAGE))
        except BaseException as exc:  # noqa: BLE001 - collected and judged below
            errors.append(exc)
            return "error"

    # when the version is unloaded while they run
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(call, i) for i in range(4)]
        time.sleep(0.1)
        host.drop(v.id)
        results = [f.result(timeout=20) for f in futures]  # no waiter waits without a bound
    # then every call ends: answered, or failed cleanly as unavailable (a 503), never a crash
    assert all(isinstance(e, Unavailable) for e in errors), errors
    assert results.count("error") == len(errors)
    assert v.id not in host.cached()
    assert _open(SlowBackend.built) == 0, "the unloaded model is closed once its calls end"


def test_batcher_items_submitted_after_close_fail_at_once():
    batcher: Batcher[int, int] = Batcher(lambda xs: [x * 2 for x in xs], max_batch=4, window=0.01)
    assert batcher(1, timeout=2) == 2
    batcher.close()
    started = time.monotonic()
    with pytest.raises(Unavailable):
        batcher.submit(2).result(timeout=5)
    assert time.monotonic() - started < 1


# ---- deploys --------------------------------------------------------------------------------


def _create(world: Any, v: Any, enabled: bool) -> str:
    service, _ = deployments.create_service(world.rt, v, "cpu", None,
                                            {"enabled": enabled, "hours": 1})
    return str(service.id)


def _deploy_in_background(world: Any, host: ModelHost, sid: str) -> threading.Thread:
    thread = threading.Thread(target=deployments.complete_deploy,
                              args=(world.rt, sid, host.load, host.drop), daemon=True)
    thread.start()
    return thread


def _slow_deploy_under_way(world: Any) -> tuple[ModelHost, Any, str, threading.Thread]:
    """A service (auto stop off) Deploying, its model a while from loaded."""
    host, v = world.host(), world.version()
    sid = _create(world, v, enabled=False)
    SlowBackend.load_delay = 0.6
    thread = _deploy_in_background(world, host, sid)
    time.sleep(0.2)
    return host, v, sid, thread


def test_stop_while_deploying_leaves_no_model_cached(world):
    # given a deploy whose model takes a while to load
    host, v, sid, thread = _slow_deploy_under_way(world)
    # when the service is stopped while it loads (the unload finds nothing loaded yet)
    assert deployments.stop(world.rt, sid)
    thread.join(timeout=20)
    # then it stays Stopped and the model it loaded for nothing is not kept
    assert deployments.get_service(world.rt, sid).status == status.STOPPED
    assert v.id not in host.cached()
    assert _open(SlowBackend.built) == 0


def test_auto_stop_changed_while_deploying_is_kept(world):
    # given a service deployed with auto stop off, whose model takes a while to load
    host, v, sid, thread = _slow_deploy_under_way(world)
    # when auto stop is switched on while it is Deploying
    changed = deployments.update_auto_stop(world.rt, sid, {"enabled": True, "hours": 2})
    assert changed.status == status.DEPLOYING
    thread.join(timeout=20)
    # then it runs with that auto stop armed, counted from Running
    service = deployments.get_service(world.rt, sid)
    assert service.status == status.RUNNING
    assert service.auto_stop_enabled and service.auto_stop_hours == 2
    assert service.stop_at is not None and service.stop_token
    left = (service.stop_at - utcnow()).total_seconds()
    assert 2 * 3600 - 60 < left <= 2 * 3600
    assert ("countdown", (sid, service.stop_token, service.stop_at)) in world.bus.sent


# ---- repairs by the scheduler's sweep, with real processes ----------------------------------


def slow_model(n: int = 768, steps: int = 12) -> bytes:
    """A one-box detector whose every inference (warm-up included) multiplies n x n matrices
    `steps` times: seconds of CPU, so a test can kill its worker mid-task."""
    out = np.zeros((1, 6, 8), dtype=np.float32)
    out[0, :, 0] = [32, 32, 20, 20, 0.9, 0.0]
    nodes = [helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
             helper.make_node("Mul", ["total", "zero"], ["nothing"]),
             helper.make_node("Add", ["w", "nothing"], ["x0"])]
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [f"x{i}", "w"], [f"x{i + 1}"]))
    nodes += [helper.make_node("ReduceSum", [f"x{steps}"], ["spent"], keepdims=0),
              helper.make_node("Mul", ["spent", "zero"], ["none"]),
              helper.make_node("Add", ["boxes", "none"], ["output0"])]
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 8])],
        initializer=[numpy_helper.from_array(np.zeros((), np.float32), "zero"),
                     numpy_helper.from_array(np.full((n, n), 1.0 / n, np.float32), "w"),
                     numpy_helper.from_array(out, "boxes")])
    return _finish(graph, {"names": str({0: "thing", 1: "other"}), "imgsz": "[64, 64]"})


@pytest.fixture(scope="module")
def repairs_stack(tmp_path_factory, redis_base):
    settings = make_settings(tmp_path_factory.mktemp("repairs"), redis_base, worker_concurrency=2)
    stack = Stack(settings)
    client = stack.app.test_client()
    assert upload(client, "slow", slow_model()).status_code == 201
    assert upload(client, "quick", build_blob_detector().SerializeToString()).status_code == 201
    yield stack
    stack.close()


def _restart_worker_after_kill(stack: Stack, when: Any) -> None:
    """Wait until `when()` holds, SIGKILL the CPU worker, start a fresh one."""
    wait_for(when, 60, 0.02, what="the task to start on the worker")
    stack.procs["worker-cpu"].kill()
    stack.restart("worker-cpu")


def _loads(stack: Stack, model: str) -> int:
    return stack.procs["worker-cpu"].tail(10**6).count(f"loading {model} v1")


def test_a_service_left_stopping_is_repaired_by_the_sweep(repairs_stack):
    # given a service left in Stopping an hour ago (a Redis error between the two steps of a stop)
    client = repairs_stack.app.test_client()
    created = deploy(client, "quick", 1)
    sid = wait_status(client, created.json["id"], "Running")["id"]
    status.transition(repairs_stack.store, sid, status.RUNNING, status.STOPPING, reason="user")
    with repairs_stack.store.session() as session:
        session.get(Service, sid).updated_at = utcnow() - timedelta(hours=1)
    # then the scheduler's sweep (nothing else runs here) finishes the stop
    wait_status(client, sid, "Stopped", timeout=30)


def test_a_deploy_lost_with_its_worker_is_sent_again(repairs_stack):
    # given a deploy running on a worker that dies mid-load
    client = repairs_stack.app.test_client()
    loads = _loads(repairs_stack, "slow")
    created = deploy(client, "slow", 1, auto_stop={"enabled": False, "hours": 1})
    assert created.status_code == 202, created.json
    _restart_worker_after_kill(repairs_stack, lambda: _loads(repairs_stack, "slow") > loads)
    # then a live worker gets it again soon (not after the broker's day-long visibility timeout)
    started = time.monotonic()
    wait_status(client, created.json["id"], "Running", timeout=90)
    assert time.monotonic() - started < 90
    client.post(f"/v1/services/{created.json['id']}/stop", headers=AUTH)


def test_an_async_prediction_lost_with_its_worker_is_redelivered_with_its_image(repairs_stack):
    # given an async prediction running on a worker that dies mid-inference
    client = repairs_stack.app.test_client()
    created = deploy(client, "slow", 1, auto_stop={"enabled": False, "hours": 1})
    sid = wait_status(client, created.json["id"], "Running", timeout=90)["id"]
    calm = post_multipart(client, f"/v1/services/{sid}/predict",
                          {"images": (io.BytesIO(IMAGE), "a.png")}, AUTH)
    assert calm.status_code == 200, calm.json
    submitted = post_multipart(client, f"/v1/services/{sid}/predictions",
                               {"images": (io.BytesIO(IMAGE), "a.png")}, AUTH)
    assert submitted.status_code == 202, submitted.json
    task_id = submitted.json["task_id"]
    _restart_worker_after_kill(repairs_stack, lambda: client.get(
        f"/v1/predictions/{task_id}", headers=AUTH).json["status"] == "STARTED")
    # then it ends, with the answer it would have had: it never stays STARTED
    seen = task_outcome(client, task_id, 90)
    assert seen["status"] == "SUCCESS", seen
    calm_result = {k: v for k, v in calm.json.items() if k != "inference_ms"}
    # an async result also names the version that answered (the sync one, in its header)
    assert seen["result"]["version"] == int(calm.headers["X-Model-Version"])
    assert {k: v for k, v in seen["result"].items() if k not in ("inference_ms", "version")
            } == calm_result
    client.post(f"/v1/services/{sid}/stop", headers=AUTH)


def _accepted_a_minute_ago(r: redis.Redis, image_key: str) -> None:
    """The image as the API keeps it (listed in the index the sweep reads), a minute old."""
    images.keep(r, image_key, IMAGE, now=time.time() - 60)
    r.expire(image_key, KEEP_SECONDS - 60)


def test_an_async_prediction_whose_message_vanished_is_sent_again(repairs_stack):
    # given an accepted async prediction whose message vanished in transit (a worker popped it
    # and died, or Redis died, before the worker recorded it): its image and owner are in Redis,
    # no message is queued, nobody claims it, and it was accepted a while ago
    client = repairs_stack.app.test_client()
    created = deploy(client, "quick", 1, auto_stop={"enabled": False, "hours": 1})
    sid = wait_status(client, created.json["id"], "Running")["id"]
    calm = post_multipart(client, f"/v1/services/{sid}/predict",
                          {"images": (io.BytesIO(IMAGE), "a.png")}, AUTH)
    task_id = str(uuid.uuid4())
    r = redis.Redis.from_url(repairs_stack.settings.redis_url)
    _accepted_a_minute_ago(r, f"detserve:image:{task_id}")
    r.set(f"detserve:task:{task_id}", sid, ex=3600)
    # (what it was sent with is known only from a claim a worker left: here, one that lost
    # Redis mid-task; without one the task ends FAILURE with the reason, never a guess)
    with repairs_stack.store.session(readonly=True) as session:
        version_id = session.get(Service, sid).version_id
    heartbeats.beat(r, "cpu", "cpu@lost-redis/0", now=time.time() + 3600)  # alive all along
    r.hset("detserve:inflight", task_id, json.dumps({
        "task": "worker.predict", "args": [version_id, f"detserve:image:{task_id}"],
        "queue": "cpu", "worker": "cpu@lost-redis/0", "since": time.time() - 60}))
    # then the sweep sends it again and it is answered
    seen = task_outcome(client, task_id)
    assert seen["status"] == "SUCCESS", seen
    assert seen["result"]["detection_boxes"] == calm.json["detection_boxes"]
    heartbeats.forget(r, "cpu", "cpu@lost-redis/0")
    # and one lost with nothing to say what it was sent with ends FAILURE with the reason
    task_id = str(uuid.uuid4())
    _accepted_a_minute_ago(r, f"detserve:image:{task_id}")
    r.set(f"detserve:task:{task_id}", sid, ex=3600)
    seen = task_outcome(client, task_id)
    assert seen["status"] == "FAILURE" and "lost in transit" in seen["error"], seen
    client.post(f"/v1/services/{sid}/stop", headers=AUTH)
