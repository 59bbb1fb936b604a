"""What every route gets by construction: the request id on every answer and in every error
body, and each route's body limit judged from the announced length."""

from __future__ import annotations

import pytest

from api_helpers import AUTH


@pytest.mark.parametrize("method,path,headers,status", [
    ("GET", "/healthz", {}, 200),
    ("GET", "/no/such/route", {}, 404),
    ("GET", "/v1/services", {}, 401),
    ("DELETE", "/healthz", {}, 405),
    ("GET", "/v1/services/nosuch", AUTH, 404),
    ("POST", "/v1/services", AUTH, 400),
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
