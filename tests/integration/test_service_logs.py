"""Service logs (GET /v1/services/{id}/logs) and resource usage, through HTTP with a real worker
and scheduler: a prediction's lines are found by its request id in the API's and the worker's."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import numpy as np
import pytest
import redis
from onnx import TensorProto, helper, numpy_helper

from api_helpers import AUTH, predict, running_service, wait_status
from detserve.monitoring import logs
from detserve.service.demo import build_blob_detector
from support import _finish, blobs_image, wait_for


def log_lines(client, sid, **query):
    resp = client.get(f"/v1/services/{sid}/logs", query_string=query, headers=AUTH)
    assert resp.status_code == 200, resp.json
    return resp.json["lines"]


@pytest.fixture(scope="module")
def service(stack):
    client = stack.app.test_client()
    return running_service(client, "logged", build_blob_detector().SerializeToString())


def test_a_prediction_is_traced_by_its_request_id_through_api_and_worker(client, service):
    # given a prediction sent with the caller's own request id
    rid = f"trace-{time.time_ns()}"
    resp = predict(client, service["id"], blobs_image([("red", 10, 10, 60, 60)]),
                   headers={**AUTH, "X-Request-Id": rid})
    assert resp.status_code == 200, resp.json
    assert resp.headers["X-Request-Id"] == rid

    # then its lines come from the API and from the worker that answered, each with the id
    def traced():
        lines = [x for x in log_lines(client, service["id"], since="5m") if x["request_id"] == rid]
        return lines if {x["component"] for x in lines} >= {"api", "worker-cpu"} else None

    lines = wait_for(traced, 10, what="the prediction's lines from api and worker-cpu")
    worker = next(x for x in lines if x["component"] == "worker-cpu")
    assert re.match(r"predicted \d+ objects in [\d.]+ ms", worker["message"]), worker
    assert worker["level"] == "INFO"
    api = next(x for x in lines if x["component"] == "api")
    assert "/predict -> 200 OK" in api["message"]
    for line in lines:
        assert set(line) >= {"time", "component", "level", "message", "request_id"}
        datetime.fromisoformat(line["time"].replace("Z", "+00:00"))


def test_an_answer_without_a_caller_id_gets_one_and_a_failure_is_logged(client, service):
    resp = predict(client, service["id"], b"not an image")
    assert resp.status_code == 400
    rid = resp.headers["X-Request-Id"]
    assert len(rid) >= 16

    def failed():
        return [x for x in log_lines(client, service["id"]) if x["request_id"] == rid]

    [line] = wait_for(failed, 10, what="the failed prediction's line")
    assert line["component"] == "api" and "-> 400" in line["message"]


def test_deploy_steps_are_logged_by_the_worker_that_loaded_the_model(client, service):
    lines = log_lines(client, service["id"], since="60m")
    worker = [x["message"] for x in lines if x["component"] == "worker-cpu"]
    assert any(m.startswith("loading logged v1") for m in worker), worker
    assert "Deploying -> Running (deployed)" in worker
    api = [x["message"] for x in lines if x["component"] == "api"]
    assert "created: logged v1 queued for a cpu worker" in api


def test_time_filters(stack, client, service):
    # given one line written ten minutes ago and a prediction now
    r = redis.Redis.from_url(stack.settings.redis_url)
    old = time.time() - 600
    logs.write(r, [(service["id"], {"time": f"{old:.6f}", "component": "scheduler",
                                    "level": "INFO", "message": "an old line", "request_id": "",
                                    "process": "test"})])
    first = predict(client, service["id"], blobs_image([("red", 0, 0, 40, 40)]))
    time.sleep(1.1)
    cut = datetime.now(UTC)
    second = predict(client, service["id"], blobs_image([("red", 0, 0, 40, 40)]))
    ids = {first.headers["X-Request-Id"], second.headers["X-Request-Id"]}
    wait_for(lambda: ids <= {x["request_id"] for x in log_lines(client, service["id"])}, 10,
             what="both predictions' lines")

    def messages(since):
        return [x["message"] for x in log_lines(client, service["id"], since=since)]

    # then 5m leaves the old line out, 30m and 60m have it
    assert "an old line" not in messages("5m")
    assert "an old line" in messages("30m") and "an old line" in messages("60m")
    # an ISO time keeps only what came at or after it
    after = {x["request_id"] for x in log_lines(client, service["id"],
                                                since=cut.isoformat().replace("+00:00", "Z"))}
    assert second.headers["X-Request-Id"] in after and first.headers["X-Request-Id"] not in after
    # limit keeps the newest lines, oldest first
    newest = log_lines(client, service["id"], since="60m", limit=2)
    assert len(newest) == 2 and newest == log_lines(client, service["id"], since="60m")[-2:]


@pytest.mark.parametrize(("query", "field"), [
    ({"since": "10m"}, "since"), ({"since": "yesterday"}, "since"),
    ({"limit": "0"}, "limit"), ({"limit": "5001"}, "limit"), ({"limit": "many"}, "limit"),
])
def test_bad_log_queries_are_400_naming_the_field(client, service, query, field):
    resp = client.get(f"/v1/services/{service['id']}/logs", query_string=query, headers=AUTH)
    assert resp.status_code == 400, resp.json
    assert field in resp.json["error"]["fields"], resp.json


def test_logs_need_the_admin_token_and_a_service(client, service):
    assert client.get(f"/v1/services/{service['id']}/logs").status_code == 401
    assert client.get(f"/v1/services/{service['id']}/logs",
                      headers={"X-Service-Key": service["key"]}).status_code in (401, 403)
    assert client.get("/v1/services/nosuch/logs", headers=AUTH).status_code == 404


# ---- resource usage -------------------------------------------------------------------------


def heavy_model(weights: int = 4_000_000) -> bytes:
    """A detector whose output depends on a 16 MB weight the input flows through (nothing to
    fold away at load), so loading it visibly grows the worker's memory."""
    w = np.full((3 * 64 * 64, weights // (3 * 64 * 64)), 1e-6, dtype=np.float32)
    out = np.zeros((1, 6, 50), dtype=np.float32)
    nodes = [helper.make_node("Flatten", ["images"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["mixed"]),
             helper.make_node("ReduceSum", ["mixed"], ["total"], keepdims=0),
             helper.make_node("Mul", ["total", "zero"], ["nothing"]),
             helper.make_node("Add", ["out", "nothing"], ["output0"])]
    graph = helper.make_graph(
        nodes, "heavy", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 50])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(out, "out"),
                     numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    return _finish(graph, {"names": str({0: "a", 1: "b"}), "imgsz": "[64, 64]"})


def usage_of(client, sid):
    resp = client.get(f"/v1/services/{sid}/usage", headers=AUTH)
    assert resp.status_code == 200, resp.json
    return resp.json["workers"]


def test_usage_grows_when_a_model_loads_and_goes_when_it_is_dropped(client):
    svc = running_service(client, "heavy", heavy_model())
    [row] = wait_for(lambda: usage_of(client, svc["id"]), 15, what="the worker's usage report")
    assert row["flavor"] == "cpu" and row["worker"].startswith("cpu@")
    assert row["model_bytes"] >= 12 * 2**20, row  # the 16 MB weight, at least most of it
    assert row["rss_bytes"] > row["model_bytes"] and row["cpu_seconds"] > 0
    assert row["gpu"] is None and row["model_device_bytes"] is None  # a CPU worker, no NVML
    # a series over time, once two reports came
    later = wait_for(lambda: [r for r in usage_of(client, svc["id"]) if r["series"]], 15,
                     what="a usage series")
    point = later[0]["series"][-1]
    assert 0 <= point["cpu_percent"] < 1000 and point["rss_bytes"] > 0

    metrics = client.get("/metrics").get_data(as_text=True)
    assert "# TYPE detserve_worker_resident_memory_bytes gauge" in metrics
    assert f'version_id="{_version_id(client, svc)}"' in metrics

    # when the service stops, the worker drops the model and its entry goes
    client.post(f"/v1/services/{svc['id']}/stop", headers=AUTH)
    wait_status(client, svc["id"], "Stopped")
    wait_for(lambda: not usage_of(client, svc["id"]), 15, what="the entry to go")


def _version_id(client, svc):
    from detserve.store import Service

    app = client.application
    with app.extensions["detserve"]["runtime"].store.session(readonly=True) as session:
        return session.get(Service, svc["id"]).version_id


def test_openapi_documents_the_new_routes_and_fields(client):
    spec = client.get("/openapi.json").json
    for path in ("logs", "usage", "extend"):
        assert f"/v1/services/{{service_id}}/{path}" in spec["paths"], path
    logs_params = {p["name"] for p in spec["paths"]["/v1/services/{service_id}/logs"]["get"]["parameters"]}
    assert {"since", "limit"} <= logs_params
    schemas = spec["components"]["schemas"]
    assert "stopping_soon" in schemas["Service"]["properties"]
    assert {"idle_minutes", "idle_stop_at", "stops_at"} <= set(schemas["AutoStop"]["properties"])
    assert "idle_minutes" in schemas["AutoStopArgs"]["properties"]
