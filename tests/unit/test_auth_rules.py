"""Who may call what: the admin token and the service keys, decided on a real SQLite store.
(tests/integration/test_auth.py checks the same matrix through HTTP on the running stack.)"""

from __future__ import annotations

import uuid

import pytest

from detserve.errors import Forbidden, NotFound, Unauthorized
from detserve.service.deployments import hash_key
from detserve.store import ModelVersion, Service, Store, utcnow
from detserve_api.auth import is_admin, service_access

ADMIN = "the-admin-token"


@pytest.fixture()
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'auth.db'}")
    s.migrate()
    yield s
    s.dispose()


def add_service(store: Store, key: str) -> str:
    now = utcnow()
    with store.session() as session:
        version = ModelVersion(model=uuid.uuid4().hex, version=1, status="Successful", sha256="0" * 64,
                               size_bytes=1, labels=["a"], input={}, output={}, created_at=now)
        session.add(version)
        session.flush()
        sid = uuid.uuid4().hex
        session.add(Service(id=sid, name="s", version_id=version.id, model="m", version=1, flavor="cpu",
                            compute_nodes=1, status="Running", auto_stop_enabled=False, auto_stop_hours=1,
                            key_hash=hash_key(key), running_seconds=0.0, created_at=now, updated_at=now))
    return sid


def test_the_admin_token_and_nothing_else_is_admin():
    assert is_admin(f"Bearer {ADMIN}", ADMIN) is True
    assert is_admin(f"bearer {ADMIN} ", ADMIN) is True  # the scheme is case-insensitive
    assert is_admin("", ADMIN) is False  # no credentials: not admin, maybe a service key
    for wrong in (f"Bearer {ADMIN}x", "Bearer ", f"Basic {ADMIN}", ADMIN, f"Token {ADMIN}"):
        with pytest.raises(Unauthorized):
            is_admin(wrong, ADMIN)


def test_a_service_key_opens_its_own_service_only(store):
    a, b = add_service(store, "key-a"), add_service(store, "key-b")
    assert service_access(store, a, False, "key-a").id == a
    assert service_access(store, b, False, "key-b").id == b
    with pytest.raises(Forbidden):
        service_access(store, a, False, "key-b")  # a real key, of another service


def test_no_key_or_an_unknown_key_is_401(store):
    a = add_service(store, "key-a")
    with pytest.raises(Unauthorized, match="X-Service-Key"):
        service_access(store, a, False, "")
    with pytest.raises(Unauthorized, match="not valid"):
        service_access(store, a, False, "key-unknown")
    with pytest.raises(Unauthorized, match="not valid"):
        service_access(store, "nope", False, "key-unknown")


def test_the_admin_reaches_any_service_and_a_missing_one_is_404(store):
    a = add_service(store, "key-a")
    assert service_access(store, a, True, "").id == a
    assert service_access(store, a, True, "some-other-key").id == a
    with pytest.raises(NotFound, match="no service 'nope'"):
        service_access(store, "nope", True, "")
    with pytest.raises(NotFound, match="unknown task"):
        service_access(store, None, True, "", missing="unknown task")
    # a valid key on a service that does not exist: 404, not 403
    with pytest.raises(NotFound):
        service_access(store, "nope", False, "key-a")


# ---- the same rules on every route of the API (an app with no worker behind it) ----------------

@pytest.fixture()
def api(tmp_path, redis_base, store):
    from conftest import as_config, make_settings
    from detserve_api import create_app

    settings = make_settings(tmp_path, redis_base, scratch=True, admin_token=ADMIN)
    app = create_app(as_config(settings), store=store)
    return app, app.test_client()


def stopped(store: Store, key: str) -> str:
    sid = add_service(store, key)
    with store.session() as session:
        session.get(Service, sid).status = "Stopped"
    return sid


def png() -> bytes:
    from support import image_bytes

    return image_bytes(16, 16)


def test_routes_need_the_admin_token_or_the_services_key(api, store):
    from api_helpers import predict

    app, client = api
    admin = {"Authorization": f"Bearer {ADMIN}"}
    a, b = stopped(store, "key-a"), stopped(store, "key-b")
    # public routes need nothing; a CORS preflight is never refused
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.options("/v1/services").status_code != 401
    # management: the admin token only
    assert client.get("/v1/services").status_code == 401
    assert client.get("/v1/services", headers={"X-Service-Key": "key-a"}).status_code == 401
    assert client.get("/v1/services", headers=admin).status_code == 200
    # predictions: the service's own key or the admin token get past auth (to 409: not running)
    assert predict(client, a, png(), headers={}).status_code == 401
    assert predict(client, a, png(), headers={"X-Service-Key": "key-a"}).status_code == 409
    assert predict(client, a, png(), headers=admin).status_code == 409
    assert predict(client, a, png(), headers={"X-Service-Key": "key-b"}).status_code == 403
    assert predict(client, "nope", png(), headers=admin).status_code == 404
    assert predict(client, b, png(), headers={"X-Service-Key": "unknown"}).status_code == 401


def test_a_task_is_checked_against_the_service_it_belongs_to(api, store):
    from detserve_api.auth import TASK_KEY

    app, client = api
    a = stopped(store, "key-a")
    stopped(store, "key-b")
    app.extensions["detserve"]["redis"].set(TASK_KEY.format(task_id="t-1"), a, ex=60)
    assert client.get("/v1/predictions/t-1", headers={"X-Service-Key": "key-a"}).status_code == 200
    assert client.get("/v1/predictions/t-1", headers={"X-Service-Key": "key-b"}).status_code == 403
    assert client.get("/v1/predictions/t-1").status_code == 401
    gone = client.get("/v1/predictions/t-2", headers={"Authorization": f"Bearer {ADMIN}"})
    assert gone.status_code == 404 and "unknown or expired" in gone.json["error"]["message"]
    assert client.get("/v1/predictions/t-2", headers={"X-Service-Key": "key-b"}).status_code == 404


# ---- the artifact token (what workers carry): artifacts' bytes, nothing else ------------------

READER = "the-artifact-token"


def test_the_artifact_token_is_a_bearer_of_exactly_that_token():
    from detserve_api.auth import bearer_is

    assert bearer_is(f"Bearer {READER}", READER) and bearer_is(f"bearer  {READER} ", READER)
    for wrong in (f"Basic {READER}", READER, f"Bearer {READER}x", "Bearer ", ""):
        assert not bearer_is(wrong, READER), wrong
    for blank in ("", "  "):  # an unset token never matches, not even a blank bearer
        assert not bearer_is("Bearer ", blank) and not bearer_is(f"Bearer {blank}", blank)
    # text no HTTP header can carry is no credential (not a 500)
    assert not bearer_is("Bearer tok\u20ac", READER)
    with pytest.raises(Unauthorized):
        is_admin("Bearer tok\u20ac", ADMIN)


def test_the_artifact_token_opens_the_artifact_route_and_no_other(tmp_path, redis_base, store):
    from conftest import as_config, make_settings
    from detserve_api import create_app

    settings = make_settings(tmp_path, redis_base, admin_token=ADMIN, artifact_token=READER)
    client = create_app(as_config(settings), store=store).test_client()
    reader = {"Authorization": f"Bearer {READER}"}
    artifact = f"/v1/artifacts/{'ab' * 32}"
    assert client.get(artifact, headers=reader).status_code == 404  # past auth: no such artifact
    assert client.get(artifact, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 404
    assert client.get(artifact).status_code == 401
    assert client.get(artifact, headers={"Authorization": f"Bearer {READER}x"}).status_code == 401
    assert client.get("/v1/services", headers=reader).status_code == 401
    assert client.get("/v1/models", headers=reader).status_code == 401
