"""The web console: static files served by the API (no build step, nothing from a CDN)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, send_from_directory

STATIC = Path(__file__).with_name("static")

bp = Blueprint("console", __name__)


@bp.get("/")
def index() -> Response:
    """The console page."""
    return send_from_directory(STATIC, "index.html", max_age=0)


@bp.get("/console/<path:name>")
def asset(name: str) -> Response:
    return send_from_directory(STATIC, name, max_age=0)


def register(app: Flask) -> None:
    app.register_blueprint(bp)
