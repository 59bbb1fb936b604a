"""A worker with no shared disk fetches an artifact from the API by hash and verifies it; damaged
bytes, on disk or over the wire, are refused."""

from __future__ import annotations

import uuid

import pytest

from api_helpers import AUTH, deploy, upload, wait_status
from detserve.errors import ModelLoadError
from detserve.service.artifacts import ArtifactStore
from detserve.service.demo import build_blob_detector
from support import ADMIN, constant_model, yolo_v8_output


def test_fetch_by_hash_from_the_api(client, live_url, tmp_path):
    version = upload(client, "fetched", build_blob_detector().SerializeToString()).json
    remote = ArtifactStore(tmp_path / "worker-cache", api_url=live_url, token=ADMIN)
    data = remote.get(version["sha256"])
    assert len(data) == version["size_bytes"]
    assert remote.exists(version["sha256"])  # cached locally for the next load


def test_unknown_or_unauthorised_fetches_fail_clearly(client, live_url, tmp_path):
    assert client.get("/v1/artifacts/" + "0" * 64, headers=AUTH).status_code == 404
    assert client.get("/v1/artifacts/" + "0" * 64).status_code == 401
    remote = ArtifactStore(tmp_path / "cache", api_url=live_url, token="wrong")
    with pytest.raises(ModelLoadError, match="could not fetch artifact"):
        remote.get("1" * 64)


def test_deploying_a_version_whose_artifact_is_corrupt_fails_with_the_reason(client, stack):
    # given a registered version whose file was damaged on disk after upload
    meta = {"names": "{0: 'a'}", "imgsz": "[64, 64]", "unique": uuid.uuid4().hex}
    version = upload(client, "corrupted", constant_model(yolo_v8_output([], [], [], nc=1), meta=meta)).json
    path = ArtifactStore(stack.settings.artifacts_dir).path(version["sha256"])
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    # when it is deployed, then the service fails and says why, rather than serving other bytes
    created = deploy(client, "corrupted", version["version"])
    assert created.status_code == 202, created.json
    failed = wait_status(client, created.json["id"], "Failed", timeout=60)
    assert "corrupt" in failed["error"]
