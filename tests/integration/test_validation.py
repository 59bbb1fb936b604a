"""Every bad input gets a JSON error naming what was wrong; nothing stored changes."""

from __future__ import annotations

import io
import json
import re
import zipfile

import pytest
from onnx import TensorProto, helper, numpy_helper

from api_helpers import AUTH, deploy, predict, upload, wait_status
from conftest import as_config
from detserve.service.demo import build_blob_detector
from support import blobs_image

DEMO = build_blob_detector().SerializeToString()


@pytest.fixture(scope="module")
def demo_version(stack):
    resp = upload(stack.app.test_client(), "valid", DEMO)
    assert resp.status_code == 201, resp.json
    return resp.json


def assert_error(resp, status, code, field=None):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.is_json, resp.get_data(as_text=True)
    err = resp.json["error"]
    assert err["code"] == code, err
    assert err["message"]
    if field is not None:
        assert field in err["fields"], err
    return err


@pytest.mark.parametrize("body,field", [
    ({"compute_nodes": 2}, "compute_nodes"),
    ({"auto_stop": {"enabled": True, "hours": 0}}, "auto_stop.hours"),
    ({"auto_stop": {"enabled": True, "hours": 25}}, "auto_stop.hours"),
    ({"auto_stop": {"enabled": True, "hours": 1.5}}, "auto_stop.hours"),
    ({"auto_stop": {"enabled": True, "hours": "2"}}, "auto_stop.hours"),
    ({"auto_stop": {"enabled": True, "hours": 2, "minutes": 3}}, "auto_stop.minutes"),
    ({"flavor": "tpu"}, "flavor"),
    ({"version": "one"}, "version"),
    ({"surprise": True}, "surprise"),
])
def test_deploy_validation(client, demo_version, body, field):
    request = {"model": "valid", "version": demo_version["version"], "flavor": "cpu", **body}
    before = service_ids(client)
    err = assert_error(client.post("/v1/services", json=request, headers=AUTH), 400,
                       "validation_error", field)
    assert field.split(".")[-1] in err["message"]
    assert service_ids(client) == before


def service_ids(client):
    return sorted(s["id"] for s in client.get("/v1/services", headers=AUTH).json["services"])


def test_missing_required_fields_are_named(client):
    err = assert_error(client.post("/v1/services", json={}, headers=AUTH), 400, "validation_error")
    assert {"model", "version", "flavor"} <= set(err["fields"])


def test_bad_json(client):
    resp = client.post("/v1/services", data="{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.is_json
    assert resp.json["error"]["code"] in {"invalid_json", "validation_error"}


def test_unknown_route_and_method(client):
    assert_error(client.get("/v1/nothing-here", headers=AUTH), 404, "not_found")
    assert_error(client.put("/v1/services", headers=AUTH), 405, "method_not_allowed")


def test_unknown_things_are_404(client):
    assert_error(client.get("/v1/services/nope", headers=AUTH), 404, "not_found")
    assert_error(client.get("/v1/models/nope/versions/1", headers=AUTH), 404, "not_found")
    assert_error(deploy(client, "nope", 1), 404, "not_found")


LONG_ID = "x" * 10_000


@pytest.mark.parametrize("method,path", [
    ("get", "/v1/services/{id}"),
    ("delete", "/v1/services/{id}"),
    ("post", "/v1/services/{id}/stop"),
    ("get", "/v1/services/{id}/events"),
    ("post", "/v1/services/{id}/predict"),
    ("get", "/v1/predictions/{id}"),
    ("get", "/v1/artifacts/{id}"),
])
def test_not_found_quotes_only_a_short_prefix_of_the_id(client, method, path):
    """A 10 KB id in the URL is not echoed back whole: a short prefix, cut with an ellipsis."""
    resp = getattr(client, method)(path.format(id=LONG_ID), headers=AUTH)
    err = assert_error(resp, 404, "not_found")
    assert "x" * 64 + "\u2026" in err["message"], err
    assert "x" * 65 not in err["message"] and len(err["message"]) < 200, err


def test_not_found_shows_unprintable_characters_of_the_id_as_question_marks(client):
    err = assert_error(client.get("/v1/services/ab%1B%5B31mcd%07", headers=AUTH), 404, "not_found")
    assert "'ab?[31mcd?'" in err["message"] and "\x1b" not in err["message"], err


def test_only_successful_versions_deploy(client):
    for status in ("Training", "Failed"):
        resp = upload(client, f"not-ready-{status}", DEMO, status=status)
        assert resp.status_code == 201 and resp.json["status"] == status
        assert_error(deploy(client, f"not-ready-{status}", 1), 409, "version_not_deployable")


def test_unavailable_flavor_is_409(client, demo_version):
    resp = client.post("/v1/services", json={"model": "valid", "version": demo_version["version"],
                                             "flavor": "gpu"}, headers=AUTH)
    assert_error(resp, 409, "flavor_unavailable")


def test_upload_bad_status(client):
    assert_error(upload(client, "bad-status", DEMO, status="Great"), 400, "validation_error", "status")


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _external_data_model(location: str) -> bytes:
    model = build_blob_detector()
    weight = next(t for t in model.graph.initializer if t.name == "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.external_data.add(key="location", value=location)
    return model.SerializeToString()


def _bad_checker_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing_input"], ["output0"])], "bad",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 7, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


@pytest.mark.parametrize("data,filename,code,needle", [
    (b"this is text", "model.onnx", "invalid_model", "not an ONNX model"),
    (_zip({"../evil.onnx": DEMO, "model.onnx": DEMO}), "m.zip", "invalid_model", "outside the package"),
    (_zip({"/abs/model.onnx": DEMO}), "m.zip", "invalid_model", "outside the package"),
    (_zip({"weights.bin": b"0"}), "m.zip", "invalid_model", "no model.onnx"),
    (_external_data_model("../../etc/passwd"), "model.onnx", "invalid_model", "outside the package"),
    (_external_data_model("/etc/passwd"), "model.onnx", "invalid_model", "outside the package"),
    (_bad_checker_model(), "model.onnx", "invalid_model", "onnx.checker"),
])
def test_bad_model_uploads(client, data, filename, code, needle):
    before = client.get("/v1/models", headers=AUTH).json
    err = assert_error(upload(client, "bad-upload", data, filename=filename), 400, code)
    assert needle in err["message"]
    assert client.get("/v1/models", headers=AUTH).json == before


def test_zip_package_with_config(client):
    config = {"labels": ["r", "g", "b"], "output": {"score_threshold": 0.5}}
    resp = upload(client, "zipped", _zip({"model.onnx": DEMO, "model.json": json.dumps(config).encode()}),
                  filename="m.zip")
    assert resp.status_code == 201, resp.json
    assert resp.json["labels"] == ["r", "g", "b"]
    assert resp.json["output"]["score_threshold"] == 0.5


def test_external_data_inside_the_package_is_inlined(client):
    model = build_blob_detector()
    weight = next(t for t in model.graph.initializer if t.name == "w")
    blob = numpy_helper.to_array(weight).tobytes()
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.external_data.add(key="location", value="weights.bin")
    weight.external_data.add(key="offset", value="7")  # after a header of the file's own
    weight.external_data.add(key="length", value=str(len(blob)))
    resp = upload(client, "external-ok", _zip({"model.onnx": model.SerializeToString(),
                                               "weights.bin": b"header!" + blob + b"trailer"}),
                  filename="m.zip")
    assert resp.status_code == 201, resp.json
    # and the model deploys and answers as the one whose weights were inline
    created = deploy(client, "external-ok", resp.json["version"], auto_stop={"enabled": False, "hours": 1})
    assert created.status_code == 202, created.json
    wait_status(client, created.json["id"], "Running")
    image = blobs_image([("green", 100, 100, 160, 160)])
    body = predict(client, created.json["id"], image).json
    assert set(body["detection_classes"]) == {"green"}
    y0, x0, y1, x1 = body["detection_boxes"][0]
    assert 100 <= (x0 + x1) / 2 <= 160 and 100 <= (y0 + y1) / 2 <= 160
    client.post(f"/v1/services/{created.json['id']}/stop", headers=AUTH)


def test_decoder_mismatch_is_refused_at_upload(client):
    err = assert_error(upload(client, "mismatch", DEMO, config='{"labels": ["a", "b"]}'), 400,
                       "invalid_model")
    assert "[1, 4+classes, N]" in err["message"] and "2 classes" in err["message"]
    err = assert_error(upload(client, "mismatch", DEMO, config='{"output": {"decoder": "boxes"}}'),
                       400, "invalid_model")
    assert "detection_boxes" in err["message"]


def test_bad_config(client):
    assert_error(upload(client, "cfg", DEMO, config="{oops"), 400, "invalid_model", "config")
    err = assert_error(upload(client, "cfg", DEMO, config='{"input": {"resize": "crop"}}'), 400,
                       "invalid_model", "input.resize")
    assert err["fields"]["input.resize"]
    err = assert_error(upload(client, "cfg", DEMO, config='{"input": {"std": [0.2, 0, 0.2]}}'), 400,
                       "invalid_model")
    assert "std" in str(err), err


def test_model_size_limit(stack):
    from detserve_api import create_app

    small = create_app({**as_config(stack.settings), "max_model_bytes": 1000}, store=stack.store)
    resp = upload(small.test_client(), "too-big", DEMO)
    assert_error(resp, 413, "payload_too_large")


def test_delete_version_in_use_is_409(client):
    resp = upload(client, "in-use", DEMO)
    created = deploy(client, "in-use", resp.json["version"])
    assert created.status_code == 202
    assert_error(client.delete("/v1/models/in-use/versions/1", headers=AUTH), 409, "version_in_use")
    client.post(f"/v1/services/{created.json['id']}/stop", headers=AUTH)
    assert client.delete("/v1/models/in-use/versions/1", headers=AUTH).status_code == 204
    assert client.get("/v1/models/in-use/versions/1", headers=AUTH).status_code == 404


def test_openapi_covers_every_route(client, stack):
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    documented = {(p, m.upper()) for p, ops in spec["paths"].items() for m in ops
                  if m in {"get", "post", "patch", "delete", "put"}}
    for rule in stack.app.url_map.iter_rules():
        if rule.endpoint.split(".")[0] in {"static", "console", "api-docs"}:
            continue
        path = re.sub(r"<(?:[^>]*:)?([^>:]+)>", r"{\1}", str(rule))
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, (path, method)
    deploy_op = spec["paths"]["/v1/services"]["post"]
    assert "requestBody" in deploy_op and "202" in deploy_op["responses"]
    upload_op = spec["paths"]["/v1/models/{name}/versions"]["post"]
    assert "multipart/form-data" in upload_op["requestBody"]["content"]
