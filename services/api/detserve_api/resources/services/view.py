"""A service row as the contract shows it (running time and cost derived, never stored twice)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import request

from detserve.config import Settings
from detserve.service import idle, progress, traffic
from detserve.service.status import RUNNING
from detserve.store import Service, utcnow
from detserve_api import context
from detserve_api.resources.predictions.wsgi import predict_path


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def running_seconds(service: Service) -> float:
    """Accrued running time, plus the current stretch while Running."""
    total = service.running_seconds or 0.0
    if service.status == RUNNING and service.running_since is not None:
        total += max(0.0, (utcnow() - service.running_since).total_seconds())
    return total


def service_view(service: Service, settings: Settings,
                 deploy: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contract's service, with the progress of its deploy from `deploy` (its Redis record)."""
    seconds = running_seconds(service)
    price = settings.prices.get(service.flavor, 0.0)
    # Cost counts in the user's hours, so a shrunk hour (tests) shrinks the bill the same way.
    hours = seconds / settings.autostop_hour_seconds
    near = idle.view_fields(service, _last_prediction(service), settings.autostop_hour_seconds)
    return {
        "id": service.id, "name": service.name, "model": service.model,
        "version": service.version, "flavor": service.flavor,
        "compute_nodes": service.compute_nodes, "status": service.status,
        "auto_stop": {"enabled": service.auto_stop_enabled, "hours": service.auto_stop_hours,
                      "stop_at": iso(service.stop_at),
                      "idle_minutes": service.auto_stop_idle_minutes,
                      "idle_stop_at": iso(near["idle_stop_at"]), "stops_at": iso(near["stops_at"])},
        "stopping_soon": near["stopping_soon"],
        "traffic_limit": None if service.traffic_limit_qps is None
        else {"qps": service.traffic_limit_qps},
        "versions": _weights(traffic.live(service)),
        "pending_versions": _pending(service.pending_traffic),
        "created_at": iso(service.created_at), "updated_at": iso(service.updated_at),
        "running_seconds": round(seconds, 3), "cost": round(hours * price, 6),
        "error": service.error,
        "predict_url": request.url_root.rstrip("/") + predict_path(service.id),
        **progress.view(deploy, service.status),
    }


def _weights(entries: list[traffic.Entry]) -> list[dict[str, int]]:
    return [{"version": e["version"], "weight": e["weight"]} for e in entries]


def _pending(pending: dict[str, Any] | None) -> dict[str, Any] | None:
    if not pending:
        return None
    return {"versions": _weights(traffic.asked(pending)),
            "state": pending.get("state"), "error": pending.get("error"),
            "requested_at": str(pending.get("requested_at", "")).replace("+00:00", "Z")}


def _last_prediction(service: Service) -> float | None:
    if not service.auto_stop_idle_minutes or service.status != RUNNING:
        return None
    return idle.last_predictions(context.redis_client(), [service.id]).get(service.id)
