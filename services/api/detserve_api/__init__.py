"""The detserve REST API: create_app() is the one factory (wsgi.py holds the single app)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery
from flask import Flask

from detserve import __version__
from detserve.celery_app import make_celery, redis_client
from detserve.config import Settings, admin_token, keep_files_private
from detserve.lane.bus import CeleryBus
from detserve.lane.client import LaneClient
from detserve.monitoring import counters as monitoring
from detserve.monitoring import logs
from detserve.service.artifacts import ArtifactStore
from detserve.service.deployments import Runtime
from detserve.service.ratelimit import Limiter
from detserve.store import Store
from detserve_api import auth, console, entrance, errors, jsonbody
from detserve_api.activity import Activity
from detserve_api.resources import register_blueprints
from detserve_api.resources.models import routes as models
from detserve_api.resources.predictions import wsgi as predictions
from detserve_api.spec import DetserveApi, ValidationIs400

REDIS_TIMEOUT_SECONDS = 5.0  # every Redis call on a request's path ends within this


def create_app(
    config: Mapping[str, Any] | None = None, *, store: Store | None = None,
    celery: Celery | None = None,
) -> Flask:
    """Build the API: settings from the environment, then `config` (tests) on top."""
    keep_files_private()  # the entry point of every API process, however it is started
    settings = Settings.from_env().with_overrides(config or {})
    app = Flask(__name__)
    app.config.update(
        API_TITLE="detserve", API_VERSION=__version__, OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/", OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=None,  # the entrance bounds every body, by route
        JSON_SORT_KEYS=False,
    )
    app.config.from_prefixed_env("DETSERVE_FLASK")
    if store is None:
        store = Store(settings.database_url)
        store.migrate()
    celery = celery or make_celery(settings, "detserve-api")
    client = redis_client(settings.redis_url, REDIS_TIMEOUT_SECONDS)
    app.extensions["detserve"] = {
        "settings": settings,
        "runtime": Runtime(store, ArtifactStore(settings.artifacts_dir), CeleryBus(celery),
                           settings.autostop_hour_seconds),
        "redis": client,
        "monitor": monitoring.Recorder(client),
        "limiter": Limiter(client),
        "lane": LaneClient(settings.redis_url, settings.predict_timeout, settings.shm_dir),
        "admin_token": admin_token(settings),
    }
    app.extensions["celery"] = celery
    api = DetserveApi(app, spec_kwargs={"info": {"description": "Deploy ONNX detection models as services"},
                                        "components": {"securitySchemes": auth.SECURITY_SCHEMES},
                                        "extra_plugins": [ValidationIs400()]})
    register_blueprints(api)
    errors.register_error_handlers(app)
    auth.register(app)
    jsonbody.register(app)  # after auth: nobody without credentials gets a body parsed
    console.register(app)
    # the image routes beside Flask; the Entrance outermost: the request id is set before
    # Activity logs about the request
    limits = entrance.upload_limits(predictions.ROUTES, models.UPLOAD_ROUTE,
                                    settings.max_image_bytes, settings.max_model_bytes)
    app.wsgi_app = entrance.Entrance(  # type: ignore[method-assign]
        Activity(app, predictions.PredictionApp(app, app.wsgi_app)), settings.body_timeout,
        limits)
    logs.install(settings.redis_url, "api")
    return app
