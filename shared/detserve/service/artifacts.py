"""Content-addressed artifact store: bytes are kept under their sha256 and checked on read."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import requests

from detserve.errors import ModelLoadError, NotFound, quoted


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """A local directory of blobs named by hash; a worker with no shared disk fetches from the API."""

    def __init__(self, root: Path, *, api_url: str = "", token: str = "") -> None:
        self.root = Path(root)
        self.api_url = api_url.rstrip("/")
        self.token = token

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise NotFound(f"no artifact {quoted(sha256)}: an artifact id is a sha256 in hex")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store bytes (idempotent) and return their sha256."""
        digest = sha256_of(data)
        target = self.path(digest)
        if not target.exists():
            _write_atomically(target, data)
        return digest

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def get(self, sha256: str) -> bytes:
        """The bytes of an artifact, verified against their hash.

        Raises:
            ModelLoadError: the artifact is missing everywhere or its bytes do not match.
        """
        path = self.path(sha256)
        if not path.exists() and self.api_url:
            self.put(self._fetch(sha256))
        if not path.exists():
            raise ModelLoadError(f"artifact {sha256} is not in {self.root}")
        data = path.read_bytes()
        if sha256_of(data) != sha256:
            raise ModelLoadError(f"artifact {sha256} is corrupt: its bytes hash differently")
        return data

    def _fetch(self, sha256: str) -> bytes:
        url = f"{self.api_url}/v1/artifacts/{sha256}"
        resp = requests.get(url, headers={"Authorization": f"Bearer {self.token}"}, timeout=300)
        if resp.status_code != 200:
            raise ModelLoadError(f"could not fetch artifact {sha256} from {url}: {resp.status_code}")
        if sha256_of(resp.content) != sha256:
            raise ModelLoadError(f"artifact {sha256} fetched from {url} hashes differently")
        return resp.content

    def derived_path(self, kind: str, key: str) -> Path:
        """Where a derived artifact (e.g. a TensorRT engine built from an ONNX file) lives."""
        if not key.isalnum() or not kind.isalnum():
            raise ValueError(f"bad derived artifact name {kind}/{key}")
        return self.root / kind / key

    def put_derived(self, kind: str, key: str, data: bytes) -> Path:
        target = self.derived_path(kind, key)
        _write_atomically(target, data)
        return target

    def get_derived(self, kind: str, key: str) -> bytes | None:
        path = self.derived_path(kind, key)
        return path.read_bytes() if path.exists() else None

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


def _write_atomically(target: Path, data: bytes) -> None:
    """A reader (another worker, another process) never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, target)
