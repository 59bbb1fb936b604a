"""The sync route's fast path answers exactly as the Flask view does: the same results, the same
errors, and every refusal comes from the Flask app itself."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from api_helpers import AUTH, predict, running_service, wait_status
from conftest import as_config
from detserve.service.demo import build_blob_detector
from support import blobs_image, image_bytes

GOOD = blobs_image([("red", 40, 40, 90, 90)])


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def services(stack):
    client = stack.app.test_client()
    running = running_service(client, "fastpath", build_blob_detector().SerializeToString())
    stopped = running_service(client, "fastpath-stopped", build_blob_detector().SerializeToString())
    assert client.post(f"/v1/services/{stopped['id']}/stop", headers=AUTH).status_code == 202
    wait_status(client, stopped["id"], "Stopped")
    return running, stopped


@pytest.fixture(scope="module")
def apps(stack):
    """The API with its fast path, counting what it hands to Flask, and the Flask app alone."""
    from detserve_api import create_app

    config = {**as_config(stack.settings), "max_image_pixels": 50_000_000}
    fast = create_app(config, store=stack.store)
    handed: list[str] = []
    fast_path = fast.wsgi_app.wsgi  # inside the tracing middleware (detserve_api/tracing.py)
    flask_app = fast_path.flask

    def counting(environ: dict[str, Any], start_response: Any) -> Any:
        handed.append(environ["PATH_INFO"])
        return flask_app(environ, start_response)

    fast_path.flask = counting
    alone = create_app(config, store=stack.store)
    alone.wsgi_app = alone.wsgi_app.wsgi.flask
    return fast, alone, handed


def _cases(running: dict, stopped: dict) -> dict[str, tuple[str, bytes, dict[str, str] | None]]:
    key = {"X-Service-Key": running["key"]}
    return {
        "service key": (running["id"], GOOD, key),
        "admin token": (running["id"], GOOD, None),
        "no credentials": (running["id"], GOOD, {}),
        "unknown key": (running["id"], GOOD, {"X-Service-Key": "nope"}),
        "another service's key": (stopped["id"], GOOD, key),
        "wrong bearer": (running["id"], GOOD, {"Authorization": "Bearer nope"}),
        "unknown service": ("nosuch", GOOD, None),
        "stopped service": (stopped["id"], GOOD, None),
        "gif": (running["id"], image_bytes(16, 16, fmt="GIF"), key),
        "empty file": (running["id"], b"", key),
        "too many pixels": (running["id"], _bomb(), key),
    }


def _timeless(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "inference_ms"}  # the one field that varies


def test_the_fast_path_answers_as_the_flask_view(services, apps):
    fast, alone, handed = apps
    for name, (service_id, data, headers) in _cases(*services).items():
        handed.clear()
        a = predict(fast.test_client(), service_id, data, headers=headers)
        b = predict(alone.test_client(), service_id, data, headers=headers)
        assert (a.status_code, _timeless(a.json)) == (b.status_code, _timeless(b.json)), name
        assert a.headers["Content-Type"] == b.headers["Content-Type"] == "application/json", name
        if a.status_code == 200:
            assert handed == [], f"{name}: the fast path should have answered itself"
            assert {"auth", "enqueue", "worker", "model"} <= {
                part.split(";")[0] for part in a.headers["Server-Timing"].split(", ")}
        else:
            assert handed == [f"/v1/services/{service_id}/predict"], f"{name}: Flask refuses it"
    codes = {name: predict(fast.test_client(), s, d, headers=h).status_code
             for name, (s, d, h) in _cases(*services).items()}
    assert codes == {"service key": 200, "admin token": 200, "no credentials": 401,
                     "unknown key": 401, "another service's key": 403, "wrong bearer": 401,
                     "unknown service": 404, "stopped service": 409, "gif": 400,
                     "empty file": 400, "too many pixels": 413}


def test_other_requests_go_to_flask(services, apps):
    fast, _, handed = apps
    running = services[0]
    handed.clear()
    client = fast.test_client()
    assert client.get(f"/v1/services/{running['id']}/predict", headers=AUTH).status_code == 405
    resp = client.post(f"/v1/services/{running['id']}/predict", headers=AUTH, data=GOOD,
                       content_type="image/png")
    assert resp.status_code == 400 and resp.json["error"]["code"] == "invalid_image"
    assert client.get(f"/v1/services/{running['id']}", headers=AUTH).status_code == 200
    assert len(handed) == 3
