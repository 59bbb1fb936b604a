"""The artifact token (DETSERVE_ARTIFACT_TOKEN, what workers carry) reads artifacts over HTTP, as
a worker with no shared disk does, and opens no other route."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pytest
import requests
from werkzeug.serving import make_server

from api_helpers import AUTH, upload
from conftest import Stack, as_config
from detserve.errors import ModelLoadError
from detserve.service.artifacts import ArtifactStore
from detserve.service.demo import build_blob_detector

READER = "test-artifact-reader-token"


@pytest.fixture(scope="module")
def reader_url(stack: Stack) -> Iterator[str]:
    """The stack's API, configured with an artifact token, over real HTTP."""
    from detserve_api import create_app

    app = create_app(as_config(dataclasses.replace(stack.settings, artifact_token=READER)),
                     store=stack.store)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


def test_a_worker_fetches_artifacts_with_the_artifact_token(client, reader_url, tmp_path):
    version = upload(client, "read-by-token", build_blob_detector().SerializeToString()).json
    remote = ArtifactStore(tmp_path / "worker-cache", api_url=reader_url, token=READER)
    assert len(remote.get(version["sha256"])) == version["size_bytes"]
    with pytest.raises(ModelLoadError, match="could not fetch artifact .* 401"):
        ArtifactStore(tmp_path / "other", api_url=reader_url, token=READER + "x").get(version["sha256"])


def test_the_artifact_token_opens_no_other_route(reader_url):
    svc = {"id": "any-service"}  # refused before any lookup: it need not exist
    bearer = {"Authorization": f"Bearer {READER}"}
    for method, path in [("GET", "/v1/models"), ("GET", f"/v1/services/{svc['id']}"),
                         ("POST", f"/v1/services/{svc['id']}/stop"),
                         ("POST", f"/v1/services/{svc['id']}/key"),
                         ("DELETE", "/v1/models/read-by-token/versions/1"),
                         ("POST", f"/v1/services/{svc['id']}/predict")]:
        resp = requests.request(method, reader_url + path, headers=bearer, timeout=10)
        assert resp.status_code == 401, (method, path, resp.text)
        assert resp.json()["error"]["code"] == "unauthorized"
    assert requests.get(reader_url + "/v1/models", headers=AUTH, timeout=10).status_code == 200


def test_a_blank_artifact_token_reads_nothing(client, live_url):
    # the shared stack has no artifact token configured: a blank bearer is no credential
    version = upload(client, "read-by-blank", build_blob_detector().SerializeToString()).json
    resp = requests.get(f"{live_url}/v1/artifacts/{version['sha256']}",
                        headers={"Authorization": "Bearer "}, timeout=10)
    assert resp.status_code == 401
