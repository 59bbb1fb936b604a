"""The content-addressed artifact store: bytes kept under their sha256, verified on every read,
fetched from the API when a worker has no shared disk, and refused when they hash differently."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from detserve.errors import ModelLoadError, NotFound
from detserve.service.artifacts import ArtifactStore, sha256_of

DATA = b"the model's bytes"


@pytest.fixture()
def api() -> Iterator[tuple[str, dict[str, bytes], list[tuple[str, str]]]]:
    """A real HTTP server answering /v1/artifacts/<sha> from a dict (a wrong body is possible)."""
    bodies: dict[str, bytes] = {}
    calls: list[tuple[str, str]] = []

    @Request.application
    def app(req: Request) -> Response:
        calls.append((req.path, req.headers.get("Authorization", "")))
        sha = req.path.rsplit("/", 1)[-1]
        return Response(bodies[sha]) if sha in bodies else Response(b"{}", status=404)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", bodies, calls
    server.shutdown()
    thread.join()


def files(root) -> list:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_get_by_hash(tmp_path):
    store = ArtifactStore(tmp_path)
    digest = store.put(DATA)
    assert digest == sha256_of(DATA) and store.exists(digest) and store.get(digest) == DATA
    assert store.path(digest) == tmp_path / digest[:2] / digest
    assert store.put(DATA) == digest and files(tmp_path) == [store.path(digest)]  # idempotent
    store.delete(digest)
    assert not store.exists(digest) and files(tmp_path) == []
    store.delete(digest)  # deleting twice is fine


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "A" * 64, "0" * 63, "../" + "0" * 61, "0" * 65])
def test_an_artifact_id_is_a_sha256_in_hex(tmp_path, bad):
    with pytest.raises(NotFound, match="sha256"):
        ArtifactStore(tmp_path).path(bad)


def test_a_missing_artifact_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="is not in"):
        ArtifactStore(tmp_path).get(sha256_of(b"never stored"))


def test_a_corrupt_local_artifact_is_refused(tmp_path):
    store = ArtifactStore(tmp_path)
    digest = store.put(DATA)
    store.path(digest).write_bytes(b"the model's bytez")  # a flipped byte on disk
    with pytest.raises(ModelLoadError, match="corrupt"):
        store.get(digest)


def test_fetched_from_the_api_with_the_token_and_cached(tmp_path, api):
    url, bodies, calls = api
    digest = sha256_of(DATA)
    bodies[digest] = DATA
    remote = ArtifactStore(tmp_path, api_url=url, token="secret")  # a trailing slash is fine
    assert remote.get(digest) == DATA and remote.get(digest) == DATA
    assert calls == [(f"/v1/artifacts/{digest}", "Bearer secret")]  # once: then from the cache
    assert files(tmp_path) == [remote.path(digest)]


def test_a_wrong_body_from_the_api_is_refused_and_not_cached(tmp_path, api):
    # given an API that answers an artifact's hash with other bytes (a broken proxy, a bad disk)
    url, bodies, calls = api
    wanted = sha256_of(DATA)
    bodies[wanted] = b"not the artifact you asked for"
    remote = ArtifactStore(tmp_path / "cache", api_url=url, token="t")
    # when a worker fetches it, then it is refused for its hash, and nothing is kept
    with pytest.raises(ModelLoadError, match="hashes differently"):
        remote.get(wanted)
    assert calls == [(f"/v1/artifacts/{wanted}", "Bearer t")]
    assert files(tmp_path) == []


def test_an_api_error_is_a_load_error_naming_the_status(tmp_path, api):
    url, _, _ = api
    with pytest.raises(ModelLoadError, match="could not fetch .*404"):
        ArtifactStore(tmp_path, api_url=url, token="t").get(sha256_of(DATA))


def test_derived_artifacts(tmp_path):
    store = ArtifactStore(tmp_path)
    assert store.get_derived("engines", "abc123") is None
    path = store.put_derived("engines", "abc123", b"plan")
    assert path == tmp_path / "engines" / "abc123" and store.get_derived("engines", "abc123") == b"plan"
    for kind, key in [("engines", "../x"), ("../e", "k"), ("engines", "a/b"), ("", "k")]:
        with pytest.raises(ValueError):
            store.derived_path(kind, key)


def test_a_fresh_data_dir_and_blobs_sharing_a_folder(tmp_path):
    # the store's root need not exist yet; two blobs whose hashes share their first two hex digits
    # share a folder, and derived artifacts of one kind share theirs
    store = ArtifactStore(tmp_path / "fresh" / "artifacts")
    first = store.put(b"blob 0")
    twin = next(d for d in (f"blob {i}".encode() for i in range(1, 5000)) if sha256_of(d)[:2] == first[:2])
    assert store.get(store.put(twin)) == twin and store.get(first) == b"blob 0"
    store.put_derived("engines", "one", b"1")
    store.put_derived("engines", "two", b"2")
    assert (store.get_derived("engines", "one"), store.get_derived("engines", "two")) == (b"1", b"2")
