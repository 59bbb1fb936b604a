"""What a key holder reads when something fails in a worker (issue 12): a stable message that says
what failed and what to do, with an incident or task id; the exception types, paths and engine
text stay in the logs."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from api_helpers import AUTH, deploy, predict, running_service, upload, wait_status
from detserve.service.artifacts import ArtifactStore
from detserve.service.demo import build_blob_detector
from support import failing_model, image_bytes, wait_for

NC, N = 1, 8
INTERNALS = re.compile(r"ONNXRuntimeError|Traceback|InvalidArgument|RuntimeException|"
                       r"pybind11|Error:|\.py\b|/tmp/|/work/|site-packages")


def _yolo_model(nodes: list, inputs: list, inits: list, name: str) -> bytes:
    """output0 = fixed boxes + 0 * `nothing` (which the nodes compute from the input)."""
    boxes = numpy_helper.from_array(np.zeros((1, 4 + NC, N), np.float32), "boxes")
    graph = helper.make_graph(
        [*nodes, helper.make_node("Add", ["boxes", "nothing"], ["output0"])], name, inputs,
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + NC, N])],
        initializer=[boxes, *inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def fails_on_bright_images() -> bytes:
    """Runs on the warm-up's grey image; an image with a white pixel makes Gather index past
    its data, an error ONNX Runtime raises in its own words and types."""
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "two"], ["doubled"]),
        helper.make_node("Floor", ["doubled"], ["floored"]),
        helper.make_node("Cast", ["floored"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["one", "index"], ["picked"]),
        helper.make_node("Mul", ["picked", "zero"], ["nothing"]),
    ]
    inits = [numpy_helper.from_array(np.asarray(2.0, np.float32), "two"),
             numpy_helper.from_array(np.zeros(1, np.float32), "one"),
             numpy_helper.from_array(np.asarray(0.0, np.float32), "zero")]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])]
    return _yolo_model(nodes, inputs, inits, "bright")


def fails_at_warm_up() -> bytes:
    """A dynamic input that the graph reshapes to 64x64: a config size of 32 cannot run."""
    nodes = [helper.make_node("Reshape", ["images", "shape"], ["fixed"]),
             helper.make_node("ReduceSum", ["fixed"], ["total"], keepdims=0),
             helper.make_node("Mul", ["total", "zero"], ["nothing"])]
    inits = [numpy_helper.from_array(np.asarray([1, 3, 64, 64], np.int64), "shape"),
             numpy_helper.from_array(np.asarray(0.0, np.float32), "zero")]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "h", "w"])]
    return _yolo_model(nodes, inputs, inits, "warmup")


def assert_clean(text: str, settings) -> None:
    assert text and not INTERNALS.search(text), text
    assert str(settings.data_dir) not in text, text


def worker_log(settings) -> str:
    return (settings.data_dir / "logs" / "worker-cpu.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def bright(stack):
    return running_service(stack.app.test_client(), "hygiene-bright", fails_on_bright_images(),
                           )


WHITE = image_bytes(64, 64, color=(255, 255, 255))


def test_a_worker_crash_in_a_sync_prediction_is_a_stable_message(client, bright, settings):
    resp = predict(client, bright["id"], WHITE)
    assert resp.status_code in {500, 503}, resp.json  # a fault of ours, not the caller's
    message = resp.json["error"]["message"]
    assert_clean(message, settings)
    assert "try again" in message
    # the caller holds a reference (an incident, or the request id) that finds the whole story
    incident = re.search(r"incident ([0-9a-f]{12})", message)
    ref = incident.group(1) if incident else (resp.json["error"].get("request_id")
                                              or resp.headers.get("X-Request-Id"))
    assert ref, resp.json
    wait_for(lambda: ref in worker_log(settings), 10, what="the reference in the worker's log")
    story = "\n".join(ln for ln in worker_log(settings).splitlines() if ref in ln)
    assert "Gather" in story or "out of" in story or "indices" in story, story


def test_a_worker_crash_in_an_async_prediction_names_the_task(client, bright, settings):
    task = predict(client, bright["id"], WHITE, route="predictions").json["task_id"]
    seen: dict = {}

    def done() -> bool:
        seen.update(client.get(f"/v1/predictions/{task}", headers=AUTH).json)
        return seen["status"] in {"SUCCESS", "FAILURE"}

    wait_for(done, 30, 0.1, what="the task")
    assert seen["status"] == "FAILURE"
    assert_clean(seen["error"], settings)
    assert task in seen["error"]
    assert task in worker_log(settings)


def test_the_grey_image_still_predicts(client, bright):
    assert predict(client, bright["id"], image_bytes(64, 64)).status_code == 200


def _failed_deploy(client, name: str, data: bytes, config: str | None = None) -> str:
    resp = upload(client, name, data, config=config)
    assert resp.status_code == 201, resp.json
    created = deploy(client, name, resp.json["version"])
    assert created.status_code == 202, created.json
    return str(wait_status(client, created.json["id"], "Failed")["error"])


def test_a_model_onnx_runtime_cannot_load_says_why_in_plain_words(client, settings):
    error = _failed_deploy(client, "hygiene-unloadable", failing_model())
    assert_clean(error, settings)
    assert "NoSuchDetector" in error and "new version" in error


def test_a_model_that_cannot_run_at_its_own_size_says_so(client, settings):
    config = json.dumps({"input": {"size": 32}, "labels": ["thing"]})
    error = _failed_deploy(client, "hygiene-warmup", fails_at_warm_up(), config)
    assert_clean(error, settings)
    assert "test inference" in error and "32x32" in error and "input.size" in error


def test_a_missing_artifact_does_not_show_where_artifacts_live(client, settings):
    model = build_blob_detector()
    model.metadata_props.add(key="hygiene", value="missing-artifact")  # a hash of its own
    resp = upload(client, "hygiene-missing", model.SerializeToString())
    assert resp.status_code == 201, resp.json
    ArtifactStore(settings.artifacts_dir).path(resp.json["sha256"]).unlink()
    created = deploy(client, "hygiene-missing", resp.json["version"])
    error = str(wait_status(client, created.json["id"], "Failed")["error"])
    assert_clean(error, settings)
    assert resp.json["sha256"] in error
    assert str(settings.artifacts_dir) in worker_log(settings)
