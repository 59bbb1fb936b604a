"""The GPU worker's Celery app, for `celery -A detserve_worker_gpu.app` (imports TensorRT)."""

from detserve.config import Settings
from detserve_worker_gpu import make_worker

app = make_worker(Settings.from_env())
