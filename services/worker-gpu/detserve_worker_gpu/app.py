"""The GPU worker's Celery app, for `celery -A detserve_worker_gpu.app` (imports TensorRT)."""

from detserve.config import Settings, keep_files_private
from detserve_worker_gpu import make_worker

keep_files_private()
app = make_worker(Settings.from_env())
