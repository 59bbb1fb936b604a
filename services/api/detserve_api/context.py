"""Accessors for what create_app put in app.extensions (typed, one place)."""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery
from flask import current_app

from detserve.config import Settings
from detserve.monitoring import heartbeats
from detserve.service.deployments import Runtime


def _ext() -> dict[str, Any]:
    return current_app.extensions["detserve"]  # type: ignore[no-any-return]


def settings() -> Settings:
    return _ext()["settings"]  # type: ignore[no-any-return]


def runtime() -> Runtime:
    return _ext()["runtime"]  # type: ignore[no-any-return]


def redis_client() -> redis.Redis:
    return _ext()["redis"]  # type: ignore[no-any-return]


def admin_token() -> str:
    return _ext()["admin_token"]  # type: ignore[no-any-return]


def celery() -> Celery:
    return current_app.extensions["celery"]  # type: ignore[no-any-return]


def flavor_available(flavor: str) -> bool:
    """True while a worker of that flavor has sent a heartbeat recently."""
    return bool(heartbeats.alive(redis_client(), flavor, 3 * settings().heartbeat_seconds))
