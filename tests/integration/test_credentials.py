"""Credentials that are not ASCII (issue 12): 401 with the usual JSON error on every route family,
whether they come as text (the test client) or as raw bytes over a real socket."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from api_helpers import AUTH, predict, running_service
from detserve.service.demo import build_blob_detector
from support import blobs_image

IMAGE = blobs_image([("red", 10, 10, 50, 50)])
TEXT_CREDENTIALS = [
    {"Authorization": "Bearer é"}, {"Authorization": "Bearer \u20ac"}, {"Authorization": "é"},
    {"X-Service-Key": "é"}, {"X-Service-Key": "\u20ac\u20ac"},
    {"Authorization": "Bearer é", "X-Service-Key": "é"},
]


@pytest.fixture(scope="module")
def routes(stack):
    """One route of each family: management, artifacts, prediction (sync, async), task result."""
    client = stack.app.test_client()
    service = running_service(client, "creds", build_blob_detector().SerializeToString())
    task = predict(client, service["id"], IMAGE, route="predictions").json["task_id"]
    sha = client.get("/v1/models/creds/versions/1", headers=AUTH).json["sha256"]
    return {
        "management": ("GET", "/v1/services"),
        "artifacts": ("GET", f"/v1/artifacts/{sha}"),
        "predict": ("POST", f"/v1/services/{service['id']}/predict"),
        "predictions": ("POST", f"/v1/services/{service['id']}/predictions"),
        "task": ("GET", f"/v1/predictions/{task}"),
    }


def assert_unauthorized(status: int, body: bytes) -> None:
    assert status == 401, body[:300]
    assert json.loads(body)["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("headers", TEXT_CREDENTIALS, ids=lambda h: repr(h))
@pytest.mark.parametrize("family", ["management", "artifacts", "predict", "predictions", "task"])
def test_non_ascii_credentials_are_401(client, routes, family, headers):
    method, path = routes[family]
    if method == "POST":
        resp = predict(client, path.split("/")[3], IMAGE, headers=headers, route=path.split("/")[4])
    else:
        resp = client.get(path, headers=headers)
    assert_unauthorized(resp.status_code, resp.get_data())


def raw_request(url: str, method: str, path: str, header: bytes) -> tuple[int, bytes]:
    """One HTTP/1.0 request with a header line sent as given, bytes and all."""
    parts = urlsplit(url)
    body = b""
    lines = [f"{method} {path} HTTP/1.0".encode(), f"Host: {parts.netloc}".encode(), header]
    if method == "POST":
        body = (b"--b\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n" + IMAGE + b"\r\n--b--\r\n")
        lines += [b"Content-Type: multipart/form-data; boundary=b",
                  f"Content-Length: {len(body)}".encode()]
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


@pytest.mark.parametrize("header", [
    "Authorization: Bearer é".encode(), b"Authorization: Bearer \xff\xfe\x80",
    "X-Service-Key: é".encode(), b"X-Service-Key: \xc3\x28\xa0\xa1",
], ids=["bearer-utf8", "bearer-undecodable", "key-utf8", "key-undecodable"])
@pytest.mark.parametrize("family", ["management", "artifacts", "predict", "predictions", "task"])
def test_raw_non_ascii_bytes_are_401_over_http(live_url, routes, family, header):
    method, path = routes[family]
    assert_unauthorized(*raw_request(live_url, method, path, header))


def test_the_admin_token_still_works_over_raw_http(live_url, routes):
    line = f"Authorization: {AUTH['Authorization']}".encode()
    status, _ = raw_request(live_url, "GET", routes["management"][1], line)
    assert status == 200

