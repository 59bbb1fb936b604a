"""Small helpers to call the API the way a user would (through the Flask test client)."""

from __future__ import annotations

import io
from typing import Any

from flask.testing import FlaskClient
from support import ADMIN, wait_for
from werkzeug.test import TestResponse

AUTH = {"Authorization": f"Bearer {ADMIN}"}


def upload(client: FlaskClient, name: str, data: bytes, filename: str = "model.onnx",
           config: str | None = None, status: str | None = None) -> TestResponse:
    form: dict[str, Any] = {"model": (io.BytesIO(data), filename)}
    if config is not None:
        form["config"] = config
    if status is not None:
        form["status"] = status
    return client.post(f"/v1/models/{name}/versions", data=form, headers=AUTH,
                       content_type="multipart/form-data")


def deploy(client: FlaskClient, model: str, version: int = 1, **extra: Any) -> TestResponse:
    body = {"model": model, "version": version, "flavor": "cpu", **extra}
    return client.post("/v1/services", json=body, headers=AUTH)


def get_service(client: FlaskClient, service_id: str) -> dict[str, Any]:
    resp = client.get(f"/v1/services/{service_id}", headers=AUTH)
    assert resp.status_code == 200, resp.json
    return resp.json  # type: ignore[no-any-return]


def wait_status(client: FlaskClient, service_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(get_service(client, service_id))
        if seen["status"] == "Failed" and status != "Failed":
            raise AssertionError(f"service failed: {seen['error']}")
        return seen["status"] == status

    wait_for(reached, timeout, 0.1, what=lambda: f"{service_id} to be {status} (last: {seen.get('status')})")
    return seen


def predict(client: FlaskClient, service_id: str, data: bytes, filename: str = "image.png",
            headers: dict[str, str] | None = None, route: str = "predict") -> TestResponse:
    return client.post(f"/v1/services/{service_id}/{route}",
                       data={"images": (io.BytesIO(data), filename)},
                       headers=AUTH if headers is None else headers,
                       content_type="multipart/form-data")


def running_service(client: FlaskClient, model: str, data: bytes, **extra: Any) -> dict[str, Any]:
    """Upload a model, deploy it and wait for Running; returns the deploy answer (with key)."""
    resp = upload(client, model, data)
    assert resp.status_code == 201, resp.json
    created = deploy(client, model, resp.json["version"], **extra)
    assert created.status_code == 202, created.json
    wait_status(client, created.json["id"], "Running")
    return created.json  # type: ignore[no-any-return]
