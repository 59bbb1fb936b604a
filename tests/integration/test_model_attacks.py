"""Model uploads built to read host files or crash the API (issue 12), through HTTP: each is a
400 invalid_model naming what is wrong (or a 413), nothing is stored, and what is stored carries
every tensor inline."""

from __future__ import annotations

import json

import onnx
import pytest

import model_attacks as m
from api_helpers import AUTH, deploy, upload, wait_status
from conftest import as_config
from detserve.service.artifacts import ArtifactStore
from detserve.service.demo import build_blob_detector
from detserve.service.externaldata import all_tensors
from detserve.store import ModelVersion

DEMO = build_blob_detector().SerializeToString()
# pyproject.toml: a file of the API's working directory (the tests run from the repo root)
LOCATIONS = ["pyproject.toml", "/etc/passwd", "../pyproject.toml", "sub/../../pyproject.toml",
             "C:\\Windows\\win.ini", "file:///etc/passwd"]


def refused(client, data: bytes, filename: str = "model.onnx", config: str | None = None,
            status: int = 400) -> dict:
    before = client.get("/v1/models", headers=AUTH).json
    resp = upload(client, "attack", data, filename=filename, config=config)
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.is_json and resp.json["error"]["message"], resp.get_data(as_text=True)
    assert client.get("/v1/models", headers=AUTH).json == before
    return resp.json["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("place", sorted(m.PLACES))
@pytest.mark.parametrize("location", LOCATIONS)
def test_external_data_anywhere_outside_the_package_is_refused(client, place, location):
    err = refused(client, m.PLACES[place](location))
    assert err["code"] == "invalid_model"
    assert "outside the package" in err["message"] and repr(location) in err["message"]


def test_the_sparse_initializer_attack_of_the_issue(client):
    # given: the exact model of the report: sparse values 'stored' in the API's pyproject.toml
    data = m.sparse_initializer("pyproject.toml")
    # then: refused, with the tensor and the path named
    err = refused(client, data)
    assert err["code"] == "invalid_model" and "'leak'" in err["message"]


@pytest.mark.parametrize("place", sorted(m.PLACES))
def test_external_data_inside_the_zip_is_inlined_everywhere(client, place):
    blob = b"\0" * 16  # four float32 zeros (or two int64: the sparse indices 0, 0)
    data = m.zipped({"model.onnx": m.PLACES[place]("weights/leak.bin"), "weights/leak.bin": blob})
    resp = upload(client, f"inline-{place}", data, filename="m.zip")
    if place == "sparse-initializer-indices":  # indices 0, 0 are not valid sparse indices
        assert resp.status_code == 400 and resp.json["error"]["code"] == "invalid_model"
        return
    assert resp.status_code == 201, resp.json
    stored = client.get(f"/v1/artifacts/{resp.json['sha256']}", headers=AUTH).get_data()
    model = onnx.load_from_string(stored)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL and not t.external_data
               for t in all_tensors(model))


@pytest.mark.parametrize("entries", [
    {"offset": "8", "length": "16"}, {"offset": "-4"}, {"length": "-1"}, {"offset": "x"},
    {"offset": "99999999999999999999"},
])
def test_external_data_past_its_file_is_refused(client, entries):
    model = onnx.load_from_string(DEMO)
    model.graph.initializer.append(m.external("extra", "w.bin", **entries))
    data = m.zipped({"model.onnx": model.SerializeToString(), "w.bin": b"\0" * 16})
    assert refused(client, data, "m.zip")["code"] == "invalid_model"


def test_one_file_inlined_many_times_is_bounded(stack):
    from detserve_api import create_app

    small = create_app({**as_config(stack.settings), "max_model_bytes": 200_000}, store=stack.store)
    model = onnx.load_from_string(DEMO)
    model.graph.initializer.extend(m.external(f"copy{i}", "w.bin", (4000,)) for i in range(100))
    data = m.zipped({"model.onnx": model.SerializeToString(), "w.bin": b"\0" * 16000})
    assert refused(small.test_client(), data, "m.zip", status=413)["code"] == "payload_too_large"


@pytest.mark.parametrize("data", [
    m.encrypted({"model.onnx": DEMO}),
    m.unknown_method({"model.onnx": DEMO}),
    m.damaged_entry({"model.onnx": DEMO}),
    m.zipped({"model.onnx": DEMO})[:-30],
    m.with_symlink({"model.onnx": m.constant_attribute("link")}, "link", "/etc/passwd"),
    m.with_symlink({"model.onnx": DEMO}, "model.json", "/etc/passwd"),
    m.zipped({"model.onnx": DEMO, **{f"empty/{i}": b"" for i in range(5000)}}),
], ids=["encrypted", "unknown-method", "damaged-entry", "truncated", "symlink-as-tensor-data",
        "symlink-as-model-json", "too-many-entries"])
def test_bad_zips_are_400(client, data):
    err = refused(client, data, "m.zip")
    assert err["code"] == "invalid_model" and "model" in err["fields"]


def _with_metadata(**props: str) -> bytes:
    model = onnx.load_from_string(DEMO)
    for prop in model.metadata_props:
        if prop.key in props:
            prop.value = props[prop.key]
    return model.SerializeToString()


@pytest.mark.parametrize("props", [
    {"names": "[oops"}, {"names": "{oops"}, {"names": "5"}, {"names": "{'a': 'red'}"},
    {"names": "[" * 5000}, {"names": "(" * 100_000}, {"names": "x" * 2_000_000},
    {"imgsz": "abc"}, {"imgsz": "[1, 2, 3]"}, {"imgsz": "0"}, {"imgsz": "True"},
    {"imgsz": "'320'"}, {"imgsz": "[320, 1e9]"}, {"imgsz": "99999999"},
], ids=lambda p: repr(p)[:40])
def test_metadata_that_does_not_parse_is_400(client, props):
    err = refused(client, _with_metadata(**props))
    assert err["code"] == "invalid_model"
    assert repr(next(iter(props))) in err["message"]


@pytest.mark.parametrize("text", [b"{oops", b"\xff\xfe{}", b"[" * 100_000, b"[]", b"null",
                                  json.dumps({"input": {"size": 10**9}}).encode(),
                                  json.dumps({"input": {"size": True}}).encode(),
                                  json.dumps({"labels": "red"}).encode()],
                         ids=["not-json", "not-utf8", "deep", "list", "null", "huge-size",
                              "bool-size", "labels-string"])
@pytest.mark.parametrize("where", ["model.json", "config"])
def test_config_that_does_not_parse_is_400(client, text, where):
    if where == "config":
        err = refused(client, DEMO, config=text.decode("latin-1"))
    else:
        err = refused(client, m.zipped({"model.onnx": DEMO, "model.json": text}), "m.zip")
    assert err["code"] == "invalid_model"


def test_a_config_with_labels_makes_bad_metadata_names_irrelevant(client):
    data = _with_metadata(names="[oops")
    resp = upload(client, "meta-overridden", data, config=json.dumps({"labels": ["r", "g", "b"]}))
    assert resp.status_code == 201, resp.json


def test_a_stored_version_that_points_outside_is_never_loaded(client, stack):
    # given: a version whose stored bytes point at a host file (registered before the checks
    # above existed, or put in the store some other way)
    good = upload(client, "stored-attack", DEMO).json
    data = m.sparse_initializer("pyproject.toml")
    digest = ArtifactStore(stack.settings.artifacts_dir).put(data)
    with stack.store.session() as session:
        session.add(ModelVersion(model="stored-attack", version=2, status="Successful",
                                 sha256=digest, size_bytes=len(data), labels=good["labels"],
                                 input=good["input"], output=good["output"]))
    # when: it is deployed
    created = deploy(client, "stored-attack", 2)
    assert created.status_code == 202, created.json
    # then: the worker refuses it before any engine sees it
    error = wait_status(client, created.json["id"], "Failed")["error"]
    assert "'leak'" in error and "outside the model" in error
