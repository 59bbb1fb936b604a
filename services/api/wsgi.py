"""WSGI entry point: `gunicorn wsgi:app` from services/api (detserve api does the same)."""

from detserve_api import create_app

app = create_app()
