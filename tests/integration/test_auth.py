"""The 401/403 matrix of the contract."""

from __future__ import annotations

import pytest

from api_helpers import AUTH, predict, running_service
from detserve.service.demo import build_blob_detector
from support import blobs_image


@pytest.fixture(scope="module")
def two_services(stack):
    client = stack.app.test_client()
    model = build_blob_detector().SerializeToString()
    return running_service(client, "auth-a", model), running_service(client, "auth-b", model)


IMAGE = blobs_image([("red", 10, 10, 50, 50)])


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic abc"}])
def test_management_needs_the_admin_token(client, headers):
    resp = client.get("/v1/services", headers=headers)
    assert resp.status_code == 401
    assert resp.json["error"]["code"] == "unauthorized"


def test_a_service_key_is_not_an_admin_token(client, two_services):
    a, _ = two_services
    assert client.get("/v1/services", headers={"X-Service-Key": a["key"]}).status_code == 401
    assert client.get("/v1/services", headers={"Authorization": f"Bearer {a['key']}"}).status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/"])
def test_public_routes_need_nothing(client, path):
    with client.get(path) as resp:
        assert resp.status_code == 200


def test_prediction_matrix(client, two_services):
    a, b = two_services
    own = predict(client, a["id"], IMAGE, headers={"X-Service-Key": a["key"]})
    assert own.status_code == 200, own.json
    assert predict(client, a["id"], IMAGE, headers=AUTH).status_code == 200
    other = predict(client, b["id"], IMAGE, headers={"X-Service-Key": a["key"]})
    assert other.status_code == 403 and other.json["error"]["code"] == "forbidden"
    assert predict(client, a["id"], IMAGE, headers={}).status_code == 401
    assert predict(client, a["id"], IMAGE, headers={"X-Service-Key": "nope"}).status_code == 401


def test_rotating_a_key_voids_the_old_one(client):
    # a service of its own: the module's two keep their keys whatever order the tests run in
    c = running_service(client, "auth-c", build_blob_detector().SerializeToString())
    resp = client.post(f"/v1/services/{c['id']}/key", headers=AUTH)
    assert resp.status_code == 200
    new = resp.json["key"]
    assert new != c["key"]
    assert predict(client, c["id"], IMAGE, headers={"X-Service-Key": c["key"]}).status_code == 401
    assert predict(client, c["id"], IMAGE, headers={"X-Service-Key": new}).status_code == 200
    client.post(f"/v1/services/{c['id']}/stop", headers=AUTH)


def test_async_task_needs_the_services_key(client, two_services):
    a, b = two_services
    sub = predict(client, a["id"], IMAGE, headers={"X-Service-Key": a["key"]}, route="predictions")
    assert sub.status_code == 202
    task = sub.json["task_id"]
    assert client.get(f"/v1/predictions/{task}").status_code == 401
    assert client.get(f"/v1/predictions/{task}", headers={"X-Service-Key": b["key"]}).status_code == 403
    assert client.get(f"/v1/predictions/{task}", headers={"X-Service-Key": a["key"]}).status_code == 200
    assert client.get(f"/v1/predictions/{task}", headers=AUTH).status_code == 200
    assert client.get("/v1/predictions/no-such-task", headers=AUTH).status_code == 404
