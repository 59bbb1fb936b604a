"""Who may call what, in one place.

- public: health, readiness, metrics, the OpenAPI document and the console's files;
- prediction routes: the admin token, or the service's own key in X-Service-Key
  (a key of another service → 403; no or unknown credentials → 401);
- an artifact's bytes (GET /v1/artifacts/{sha256}): the admin token, or the artifact token
  (DETSERVE_ARTIFACT_TOKEN, what workers carry), which opens no other route;
- everything else: the admin token (Authorization: Bearer ...).

An empty or whitespace token is never valid, whatever is configured.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Flask, g, request
from sqlalchemy import bindparam, select

from detserve.errors import Forbidden, NotFound, Unauthorized, quoted
from detserve.service.deployments import hash_key
from detserve.store import Service, Store
from detserve_api import context

# what the prediction routes need of a service, read in one small query per request
HOT_QUERY = select(Service.id, Service.status, Service.flavor, Service.version_id,
                   Service.key_hash, Service.traffic_limit_qps,
                   Service.version, Service.traffic,  # the versions' weights (service/traffic.py)
                   ).where(Service.id == bindparam("id"))  # built once
KEY_OWNER_QUERY = select(Service.id).where(Service.key_hash == bindparam("key_hash"))
PUBLIC_BLUEPRINTS = {"health", "api-docs", "console"}
PREDICTION_BLUEPRINT = "predictions"
ARTIFACT_ENDPOINT = "models.Artifact"
TASK_KEY = "detserve:task:{task_id}"

SECURITY_SCHEMES = {
    "AdminToken": {"type": "http", "scheme": "bearer"},
    "ServiceKey": {"type": "apiKey", "in": "header", "name": "X-Service-Key"},
}


def register(app: Flask) -> None:
    app.before_request(check_request)


def check_request() -> None:
    """Raise Unauthorized/Forbidden unless the caller may use this endpoint."""
    endpoint = request.endpoint or ""
    blueprint = endpoint.split(".", 1)[0] if "." in endpoint else ""
    if request.method == "OPTIONS" or endpoint in {"static", ""} or blueprint in PUBLIC_BLUEPRINTS:
        return
    if endpoint == ARTIFACT_ENDPOINT and bearer_is(request.headers.get("Authorization", ""),
                                                    context.settings().artifact_token):
        return
    g.is_admin = is_admin(request.headers.get("Authorization", ""), context.admin_token())
    if blueprint == PREDICTION_BLUEPRINT:
        _check_service_access()
    elif not g.is_admin:
        raise Unauthorized("this route needs the admin token: Authorization: Bearer <token>")


def is_admin(authorization: str, admin_token: str) -> bool:
    """True for the admin's bearer token, False for none; Unauthorized for any other."""
    if not authorization:
        return False
    if not admin_token.strip():  # an unset token must never match an empty bearer
        raise Unauthorized("the bearer token is not the admin token")
    scheme, _, token = authorization.partition(" ")
    sent = wire_bytes(token.strip())
    # bytes, not str: compare_digest refuses str with non-ASCII characters (a TypeError, a 500)
    if scheme.lower() != "bearer" or sent is None or not hmac.compare_digest(
            sent, admin_token.encode()):
        raise Unauthorized("the bearer token is not the admin token")
    return True


def wire_bytes(value: str) -> bytes | None:
    """A header value's bytes as they came over the wire (WSGI decodes headers as latin-1);
    None for text that no HTTP header can carry."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return None


def bearer_is(authorization: str, expected: str) -> bool:
    """True when the bearer token is `expected`, which is never a blank one."""
    scheme, _, token = authorization.partition(" ")
    sent = wire_bytes(token.strip())
    return (bool(expected.strip()) and scheme.lower() == "bearer" and sent is not None
            and hmac.compare_digest(sent, expected.strip().encode()))


def _check_service_access() -> None:
    args = request.view_args or {}
    service_id = args.get("service_id") or _task_service(args.get("task_id"))
    g.service = service_access(context.runtime().store, service_id, g.is_admin,
                               request.headers.get("X-Service-Key", ""),
                               missing=None if service_id else
                               f"no prediction task {quoted(args.get('task_id'))} (unknown or expired)")


def service_access(store: Store, service_id: str | None, admin: bool, key: str,
                   missing: str | None = None) -> Any:
    """The service's hot row (HOT_QUERY), if the caller may predict with it.

    Raises:
        Unauthorized: no key and not admin, or a key of no service.
        Forbidden: the key of another service.
        NotFound: no such service (`missing` says what was not found).
    """
    if not admin and not key:
        raise Unauthorized("send the service's key in X-Service-Key, or the admin token")
    if not admin and not key.isascii():  # keys are ASCII: this one is no key (and hashes oddly)
        raise Unauthorized("the service key is not valid: keys are ASCII text")
    service = store.first(HOT_QUERY, {"id": service_id}) if service_id else None  # one query
    if not admin:
        digest = hash_key(key)
        if service is None or not hmac.compare_digest(service.key_hash, digest):
            if store.first(KEY_OWNER_QUERY, {"key_hash": digest}) is None:
                raise Unauthorized("the service key is not valid (it may have been rotated)")
            if service is not None:
                raise Forbidden("this key belongs to another service")
    if service is None:
        raise NotFound(missing or f"no service {quoted(service_id)}")
    return service


def _task_service(task_id: str | None) -> str | None:
    """The service a prediction task belongs to (None: unknown or expired task)."""
    if task_id is None:
        return None
    raw = context.redis_client().get(TASK_KEY.format(task_id=task_id))
    return raw.decode() if isinstance(raw, bytes) else raw
