"""Flavors: the price list, and whether a worker of each kind is alive."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from detserve.tasknames import FLAVORS
from detserve_api import context

blp = Blueprint("flavors", __name__, url_prefix="/v1/flavors", description="Resource flavors")

DESCRIPTIONS = {"cpu": "cost-effective", "gpu": "better performance"}


class FlavorSchema(Schema):
    id = fields.String()
    kind = fields.String()
    description = fields.String()
    price_per_hour = fields.Float()
    available = fields.Boolean()


class FlavorListSchema(Schema):
    flavors = fields.List(fields.Nested(FlavorSchema))


@blp.route("")
class Flavors(MethodView):
    @blp.response(200, FlavorListSchema)
    def get(self) -> dict[str, Any]:
        """The flavors, their price per hour and availability."""
        prices = context.settings().prices
        return {"flavors": [
            {"id": f, "kind": f, "description": DESCRIPTIONS[f], "price_per_hour": prices.get(f, 0.0),
             "available": context.flavor_available(f)} for f in FLAVORS
        ]}
