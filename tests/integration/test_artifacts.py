"""A worker with no shared disk fetches an artifact from the API by hash and verifies it."""

from __future__ import annotations

import pytest

from api_helpers import AUTH, upload
from detserve.errors import ModelLoadError
from detserve.service.artifacts import ArtifactStore
from detserve.service.demo import build_blob_detector
from support import ADMIN


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
