"""GPU worker: Celery on queue "gpu", models run as TensorRT engines built from ONNX.

Run with `detserve worker --flavor gpu` (celery -A detserve_worker_gpu.app worker -Q gpu); it
refuses to start without a usable GPU and TensorRT.
"""

from __future__ import annotations

from celery import Celery

from detserve.celery_app import make_celery
from detserve.config import Settings
from detserve.inference.worker import register_worker_tasks


def gpu_problem() -> str | None:
    """Why a GPU worker cannot run here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'detserve[gpu]' on a machine with CUDA)"
    try:
        import pycuda.driver as cuda
    except ImportError:
        return "pycuda is not installed (pip install 'detserve[gpu]')"
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            return "no NVIDIA GPU is visible to this process"
    except Exception as exc:  # the driver raises its own error types
        return f"the CUDA driver is not usable: {exc}"
    return None


def make_worker(settings: Settings) -> Celery:
    """The GPU worker's Celery app with the worker tasks on TensorRT."""
    from detserve_worker_gpu.tensorrt import TensorRTBackend

    app = make_celery(settings, "detserve-worker-gpu")
    register_worker_tasks(app, TensorRTBackend, settings, flavor="gpu")
    return app
