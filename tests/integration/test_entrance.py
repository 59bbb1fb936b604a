"""What every route gets by construction: the request id on every answer and in every error
body, and each route's body limit judged from the announced length."""

from __future__ import annotations

import io
import json

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from api_helpers import AUTH, running_service
from detserve.service.demo import build_blob_detector


@pytest.mark.parametrize("method,path,headers,status", [
    ("GET", "/healthz", {}, 200),
    ("GET", "/no/such/route", {}, 404),
    ("GET", "/v1/services", {}, 401),
    ("DELETE", "/healthz", {}, 405),
    ("GET", "/v1/services/nosuch", AUTH, 404),
    ("POST", "/v1/services", AUTH, 400),
    # the image routes (their own WSGI app beside Flask) get the same
    ("POST", "/v1/services/nosuch/predict", AUTH, 404),
    ("POST", "/v1/services/nosuch/predictions", {}, 401),
    ("GET", "/v1/services/nosuch/predict", AUTH, 405),
])
def test_every_answer_carries_a_request_id(client, method, path, headers, status):
    resp = client.open(path, method=method, headers=headers)
    assert resp.status_code == status
    request_id = resp.headers["X-Request-Id"]
    assert 16 <= len(request_id) <= 64
    if status >= 400:
        assert resp.json["error"]["request_id"] == request_id
        assert {"code", "message"} <= set(resp.json["error"])


def test_a_callers_sane_id_is_kept_and_another_replaced(client):
    kept = client.get("/no/such/route", headers={"X-Request-Id": "abc.DEF_12-3"})
    assert kept.headers["X-Request-Id"] == "abc.DEF_12-3"
    assert kept.json["error"]["request_id"] == "abc.DEF_12-3"
    for bad in ("has space", "x" * 65, "semi;colon", "é"):
        resp = client.get("/healthz", headers={"X-Request-Id": bad})
        assert resp.headers["X-Request-Id"] != bad and len(resp.headers["X-Request-Id"]) >= 16


@pytest.mark.parametrize("path,length", [("/v1/services", 17 * 1024),
                                         ("/v1/services/x/predict", 30 * 1024 * 1024),
                                         ("/v1/models/m/versions", 600 * 1024 * 1024)])
def test_an_announced_length_over_the_routes_limit_is_413_at_once(client, path, length):
    # the body is never sent: the announced length alone is judged, before credentials
    resp = client.post(path, environ_overrides={"CONTENT_LENGTH": str(length)})
    assert resp.status_code == 413, resp.json
    assert resp.json["error"]["code"] == "payload_too_large"
    assert str(length) in resp.json["error"]["message"]


def test_a_wrong_method_on_an_image_route_names_the_one_accepted(client):
    resp = client.put("/v1/services/x/predictions", headers=AUTH)
    assert resp.status_code == 405 and resp.headers["Allow"] == "POST"
    assert resp.json["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("path,limit", [("/v1/services/x/predict", "image"),
                                        ("/v1/services", "json")])
def test_a_chunked_body_is_cut_at_the_routes_limit(client, stack, path, limit):
    if limit == "image":  # a running service: its body is read once the caller is admitted
        model = build_blob_detector().SerializeToString()
        path = f"/v1/services/{running_service(client, 'chunked', model)['id']}/predict"
    # no length announced: the body itself is counted as it is read, whichever app reads it
    cap = (stack.settings.max_image_bytes + 64 * 1024) if limit == "image" else 16 * 1024
    environ = EnvironBuilder(path=path, method="POST", headers={
        **AUTH, "Transfer-Encoding": "chunked",
        "Content-Type": "multipart/form-data; boundary=b" if limit == "image"
        else "application/json"}).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": io.BytesIO(b"x" * (cap + 8192)), "wsgi.input_terminated": True})
    body, status, _ = run_wsgi_app(client.application, environ, buffered=True)
    assert status.startswith("413"), status
    assert json.loads(b"".join(body))["error"]["code"] == "payload_too_large"
