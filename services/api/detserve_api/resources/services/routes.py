"""Services: deploy, list, get, start, stop, change auto stop, rotate key, events, monitoring."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import select

from detserve.errors import FlavorUnavailable
from detserve.monitoring import counters as monitoring
from detserve.monitoring import usage
from detserve.service import deployments, idle, progress, rollout, traffic, versions
from detserve.service.status import ACTIVE, STOPPED
from detserve.store import Service
from detserve_api import context
from detserve_api.resources.services import operate
from detserve_api.resources.services.schemas import (
    DeployArgsSchema,
    EventListSchema,
    ExtendArgsSchema,
    KeySchema,
    LogArgsSchema,
    LogListSchema,
    MonitoringSchema,
    PatchArgsSchema,
    ServiceListSchema,
    ServiceSchema,
    UsageSchema,
)
from detserve_api.resources.services.view import iso, service_view

blp = Blueprint("services", __name__, url_prefix="/v1/services", description="Real-time services")


def _view(service_id: str) -> dict[str, Any]:
    service = deployments.get_service(context.runtime(), service_id)
    return service_view(service, context.settings(),
                        progress.read(context.redis_client(), service_id))


@blp.route("")
class Services(MethodView):
    @blp.arguments(DeployArgsSchema)
    @blp.response(202, ServiceSchema)
    def post(self, args: dict[str, Any]) -> dict[str, Any]:
        """Deploy a Successful model version as a service (answers in Deploying)."""
        rt = context.runtime()
        split = rollout.resolve(rt, args["model"], args["versions"]) if args["versions"] else None
        number = traffic.primary(split)["version"] if split else args["version"]
        version = versions.get_version(rt, args["model"], number)
        if not context.flavor_available(args["flavor"]):
            raise FlavorUnavailable(
                f"no {args['flavor']} worker is alive; start one (detserve worker --flavor "
                f"{args['flavor']}) or pick an available flavor from GET /v1/flavors"
            )
        limit = args["traffic_limit"]
        service, key = deployments.create_service(rt, version, args["flavor"], args["name"],
                                                  args["auto_stop"],
                                                  limit["qps"] if limit else None, split)
        return {**_view(service.id), "key": key}

    @blp.response(200, ServiceListSchema)
    def get(self) -> dict[str, Any]:
        """List services, newest first."""
        with context.runtime().store.session(readonly=True) as session:
            rows = session.scalars(select(Service).order_by(Service.created_at.desc())).all()
        settings = context.settings()
        records = progress.read_many(context.redis_client(), [s.id for s in rows])
        return {"services": [service_view(s, settings, records.get(s.id)) for s in rows]}


@blp.route("/<string:service_id>")
class OneService(MethodView):
    @blp.response(200, ServiceSchema)
    def get(self, service_id: str) -> dict[str, Any]:
        """Get a service."""
        return _view(service_id)

    @blp.arguments(PatchArgsSchema)
    @blp.response(200, ServiceSchema)
    def patch(self, args: dict[str, Any], service_id: str) -> dict[str, Any]:
        """Change the auto stop (a Running service is re-armed from now), the traffic limit or the
        versions and their weights (a Running service switches once the new ones are loaded)."""
        if "versions" in args:  # first: its checks read the database, and a bad one stores nothing
            rollout.change(context.runtime(), service_id, args["versions"])
        if "traffic_limit" in args:
            limit = args["traffic_limit"]
            deployments.update_traffic_limit(context.runtime(), service_id,
                                             limit["qps"] if limit else None)
        if "auto_stop" in args:
            deployments.update_auto_stop(context.runtime(), service_id, args["auto_stop"])
        return _view(service_id)

    @blp.response(204)
    def delete(self, service_id: str) -> None:
        """Stop and delete a service."""
        deployments.delete_service(context.runtime(), service_id)


@blp.route("/<string:service_id>/stop")
class Stop(MethodView):
    @blp.response(202, ServiceSchema)
    @blp.alt_response(200, schema=ServiceSchema, description="already Stopped")
    def post(self, service_id: str) -> tuple[dict[str, Any], int]:
        """Stop a service; voids any pending auto stop."""
        before = deployments.get_service(context.runtime(), service_id)
        deployments.stop(context.runtime(), service_id, reason="user")
        return _view(service_id), 200 if before.status == STOPPED else 202


@blp.route("/<string:service_id>/start")
class Start(MethodView):
    @blp.response(202, ServiceSchema)
    def post(self, service_id: str) -> dict[str, Any]:
        """Start a Stopped or Failed service again; auto stop is armed once it runs."""
        service = deployments.get_service(context.runtime(), service_id)
        if service.status not in ACTIVE and not context.flavor_available(service.flavor):
            raise FlavorUnavailable(f"no {service.flavor} worker is alive to start this service on")
        deployments.start(context.runtime(), service_id)
        return _view(service_id)


@blp.route("/<string:service_id>/key")
class Key(MethodView):
    @blp.response(200, KeySchema)
    def post(self, service_id: str) -> dict[str, str]:
        """Make a new prediction key; the old one stops working."""
        return {"key": deployments.rotate_key(context.runtime(), service_id)}


@blp.route("/<string:service_id>/events")
class Events(MethodView):
    @blp.response(200, EventListSchema)
    def get(self, service_id: str) -> dict[str, Any]:
        """The service's status history, oldest first."""
        rows = deployments.events(context.runtime(), service_id)
        return {"events": [{"at": iso(e.at), "from_": e.from_status, "to": e.to_status,
                            "reason": e.reason} for e in rows]}


@blp.route("/<string:service_id>/monitoring")
class Monitoring(MethodView):
    @blp.response(200, MonitoringSchema)
    def get(self, service_id: str) -> dict[str, Any]:
        """Requests, failures and latency over the last hour, by minute."""
        deployments.get_service(context.runtime(), service_id)
        return monitoring.summary(context.redis_client(), service_id)


@blp.route("/<string:service_id>/extend")
class Extend(MethodView):
    @blp.arguments(ExtendArgsSchema)
    @blp.response(200, ServiceSchema)
    def post(self, args: dict[str, Any], service_id: str) -> dict[str, Any]:
        """Push the auto-stop time back by `hours`; the earlier countdown does nothing."""
        idle.extend(context.runtime(), service_id, args["hours"])
        return _view(service_id)


@blp.route("/<string:service_id>/logs")
class Logs(MethodView):
    @blp.arguments(LogArgsSchema, location="query")
    @blp.response(200, LogListSchema)
    def get(self, args: dict[str, Any], service_id: str) -> dict[str, Any]:
        """Log lines about the service from the API, its workers and the scheduler."""
        deployments.get_service(context.runtime(), service_id)
        return operate.log_lines(context.redis_client(), service_id, args["since"], args["limit"])


@blp.route("/<string:service_id>/usage")
class Usage(MethodView):
    @blp.response(200, UsageSchema)
    def get(self, service_id: str) -> dict[str, Any]:
        """CPU, memory (and GPU) of the workers holding the service's model (any of its versions),
        last hour."""
        service = deployments.get_service(context.runtime(), service_id)
        return {"workers": usage.for_version(context.redis_client(),
                                             sorted(traffic.served_ids(service)))}
