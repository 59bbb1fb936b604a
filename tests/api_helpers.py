"""Small helpers to call the API the way a user would (through the Flask test client)."""

from __future__ import annotations

import io
from typing import Any

from flask.testing import FlaskClient
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import TestResponse, encode_multipart

from support import ADMIN, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN}"}


def upload(client: FlaskClient, name: str, data: bytes, filename: str = "model.onnx",
           config: str | None = None, status: str | None = None) -> TestResponse:
    form: dict[str, Any] = {"model": (io.BytesIO(data), filename)}
    if config is not None:
        form["config"] = config
    if status is not None:
        form["status"] = status
    return post_multipart(client, f"/v1/models/{name}/versions", form, AUTH)


def post_multipart(client: FlaskClient, path: str, form: dict[str, Any],
                   headers: dict[str, str]) -> TestResponse:
    """POST a multipart body encoded in memory (werkzeug spools large bodies to a temporary file
    that its test client never closes)."""
    fields = {k: FileStorage(v[0], filename=v[1], content_type="application/octet-stream")
              if isinstance(v, tuple) else v for k, v in form.items()}
    boundary, body = encode_multipart(MultiDict(fields))
    return client.post(path, data=body, headers=headers,
                       content_type=f"multipart/form-data; boundary={boundary}")


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
    return post_multipart(client, f"/v1/services/{service_id}/{route}",
                          {"images": (io.BytesIO(data), filename)}, AUTH if headers is None else headers)


def running_service(client: FlaskClient, model: str, data: bytes, **extra: Any) -> dict[str, Any]:
    """Upload a model, deploy it and wait for Running; returns the deploy answer (with key)."""
    resp = upload(client, model, data)
    assert resp.status_code == 201, resp.json
    created = deploy(client, model, resp.json["version"], **extra)
    assert created.status_code == 202, created.json
    wait_status(client, created.json["id"], "Running")
    return created.json  # type: ignore[no-any-return]


def task_outcome(client: FlaskClient, task_id: str, timeout: float = 30) -> dict[str, Any]:
    """GET /v1/predictions/{task_id} until the task has ended (SUCCESS or FAILURE); its body."""
    seen: dict[str, Any] = {}

    def ended() -> bool:
        seen.update(client.get(f"/v1/predictions/{task_id}", headers=AUTH).json)
        return seen["status"] in ("SUCCESS", "FAILURE")

    wait_for(ended, timeout, 0.1, what=lambda: f"task {task_id} to end (last: {seen})")
    return seen
