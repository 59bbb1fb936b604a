"""Liveness, readiness and Prometheus metrics (no credentials needed)."""

from __future__ import annotations

from typing import Any

import redis
from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import select

from detserve.errors import Unavailable
from detserve.monitoring import counters as monitoring
from detserve.monitoring import usage
from detserve.store import Service
from detserve_api import context

blp = Blueprint("health", __name__, url_prefix="", description="Health and metrics")


class HealthSchema(Schema):
    status = fields.String()
    database = fields.Boolean()
    broker = fields.Boolean()


@blp.route("/healthz")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    def get(self) -> dict[str, Any]:
        """The process is alive."""
        return {"status": "ok"}


@blp.route("/readyz")
class Ready(MethodView):
    @blp.response(200, HealthSchema)
    def get(self) -> dict[str, Any]:
        """The database and the broker both answer."""
        database = context.runtime().store.ping()
        try:
            broker = bool(context.redis_client().ping())
        except redis.RedisError:
            broker = False
        if not (database and broker):
            raise Unavailable(f"not ready: database {'ok' if database else 'down'}, "
                           f"broker {'ok' if broker else 'down'}")
        return {"status": "ok", "database": database, "broker": broker}


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.response(200)
    def get(self) -> Response:
        """Prometheus text format: services' totals (deleted ones left out), workers' usage."""
        client = context.redis_client()
        return Response(monitoring.prometheus(client, _live_services, usage.UsageMetrics(client)),
                        mimetype=CONTENT_TYPE_LATEST)


def _live_services() -> set[str]:
    with context.runtime().store.session(readonly=True) as session:
        return set(session.scalars(select(Service.id)))
