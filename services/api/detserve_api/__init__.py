"""The detserve REST API: create_app() is the one factory (wsgi.py holds the single app)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
from celery import Celery
from flask import Flask
from flask_smorest import Api

from detserve import __version__, allocator
from detserve.celery_app import make_celery
from detserve.config import Settings, admin_token
from detserve.lane import synclane
from detserve.lane.bus import CeleryBus
from detserve.lane.handoff import Handoff
from detserve.monitoring import counters as monitoring
from detserve.monitoring import logs
from detserve.service.artifacts import ArtifactStore
from detserve.service.deployments import Runtime
from detserve.store import Store
from detserve_api import auth, console, errors
from detserve_api.fastpath import PredictFastPath
from detserve_api.resources import register_blueprints
from detserve_api.tracing import Tracing


def create_app(
    config: Mapping[str, Any] | None = None, *, store: Store | None = None,
    celery: Celery | None = None,
) -> Flask:
    """Build the API: settings from the environment, then `config` (tests) on top."""
    settings = Settings.from_env().with_overrides(config or {})
    allocator.tune()  # before gunicorn's threads exist
    app = Flask(__name__)
    app.config.update(
        API_TITLE="detserve", API_VERSION=__version__, OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/", OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=max(settings.max_model_bytes, settings.max_image_bytes) + 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    app.config.from_prefixed_env("DETSERVE_FLASK")
    if store is None:
        store = Store(settings.database_url)
        store.migrate()
    celery = celery or make_celery(settings, "detserve-api")
    token = admin_token(settings)
    client = redis.Redis.from_url(settings.redis_url)  # thread-safe: one pool per process
    app.extensions["detserve"] = {
        "settings": settings,
        "runtime": Runtime(store, ArtifactStore(settings.artifacts_dir), CeleryBus(celery),
                           settings.autostop_hour_seconds),
        "redis": client,
        "monitor": monitoring.Recorder(client),
        "lanes": synclane.LaneClient(client, Handoff(settings.shm_dir) if settings.shm_dir else None),
        "admin_token": token,
    }
    app.extensions["celery"] = celery
    api = Api(app, spec_kwargs={"info": {"description": "Deploy ONNX detection models as services"},
                                "components": {"securitySchemes": auth.SECURITY_SCHEMES}})
    register_blueprints(api)
    errors.register_error_handlers(app)
    auth.register(app)
    console.register(app)
    app.wsgi_app = Tracing(app, PredictFastPath(app))  # type: ignore[method-assign]
    logs.install(settings.redis_url, "api")
    return app
