"""One blueprint per resource, each with its schemas beside it."""

from __future__ import annotations

from flask_smorest import Api

from detserve_api.resources.flavors.routes import blp as flavors
from detserve_api.resources.health.routes import blp as health
from detserve_api.resources.models.routes import blp as models
from detserve_api.resources.predictions.routes import blp as predictions
from detserve_api.resources.predictions.routes import document as document_predictions
from detserve_api.resources.services.routes import blp as services

RESOURCES = (health, models, flavors, services, predictions)


def register_blueprints(api: Api) -> None:
    for blp in RESOURCES:
        api.register_blueprint(blp)
    document_predictions(api)
