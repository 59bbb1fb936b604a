"""CPU worker: Celery on queue "cpu", models run by ONNX Runtime.

Run with `detserve worker --flavor cpu` (celery -A detserve_worker_cpu worker -Q cpu).
"""

from __future__ import annotations

from celery import Celery

from detserve.backends.onnxruntime import OnnxRuntimeBackend
from detserve.celery_app import make_celery
from detserve.config import Settings, keep_files_private
from detserve.inference.worker import register_worker_tasks


def make_worker(settings: Settings) -> Celery:
    """The CPU worker's Celery app with the worker tasks on ONNX Runtime."""
    app = make_celery(settings, "detserve-worker-cpu")
    register_worker_tasks(app, OnnxRuntimeBackend, settings, flavor="cpu")
    return app


keep_files_private()
app = make_worker(Settings.from_env())
