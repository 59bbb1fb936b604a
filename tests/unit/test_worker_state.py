"""The worker's concurrency has one owner: fixed once, at worker_init, before any prediction."""

from __future__ import annotations

import pytest

from detserve.backends.onnxruntime import OnnxRuntimeBackend
from detserve.celery_app import make_celery
from detserve.config import Settings
from detserve.inference.worker import WorkerState


def test_the_concurrency_is_fixed_once_before_any_prediction():
    settings = Settings(redis_url="redis://127.0.0.1:1/0").resolved()
    state = WorkerState(make_celery(settings), OnnxRuntimeBackend, settings)
    with pytest.raises(RuntimeError, match="start"):
        state.predict(1, b"")
    state.start(3)
    assert state.concurrency == 3
    with pytest.raises(RuntimeError, match="once"):
        state.start(4)
    assert state.concurrency == 3
