"""A worker process keeps at most model_cache_size detectors, dropping the least recently used."""

from __future__ import annotations

import dataclasses

from conftest import make_settings
from detserve.backends.onnxruntime import OnnxRuntimeBackend
from detserve.celery_app import make_celery
from detserve.inference.worker import ModelHost
from detserve.lane.bus import CeleryBus
from detserve.service import status
from detserve.service.artifacts import ArtifactStore
from detserve.service.deployments import Runtime
from detserve.service.versions import register_version
from detserve.store import Store
from support import constant_model, image_bytes, yolo_v8_output

META = {"names": "{0: 'a'}", "imgsz": "[64, 64]"}


def test_the_least_recently_used_model_is_dropped_and_loads_again(tmp_path, redis_base):
    settings = dataclasses.replace(make_settings(tmp_path, redis_base, scratch=True), model_cache_size=2)
    store = Store(settings.database_url)
    store.migrate()
    rt = Runtime(store, ArtifactStore(settings.artifacts_dir), CeleryBus(make_celery(settings)))
    try:
        versions = [register_version(rt, f"m{i}", constant_model(
            yolo_v8_output([(8.0 * (i + 1), 32.0, 10.0, 10.0)], [0], [0.9], nc=1), meta=META),
            None, status.SUCCESSFUL, max_bytes=1 << 30) for i in range(3)]
        host = ModelHost(rt, OnnxRuntimeBackend, settings)
        first, second = host.get(versions[0].id), host.get(versions[1].id)
        assert host.get(versions[0].id) is first  # cached, and now the most recently used
        third = host.get(versions[2].id)  # over the size: the least recently used (v1) goes
        assert host.get(versions[0].id) is first and host.get(versions[2].id) is third
        again = host.get(versions[1].id)  # loaded again, from its artifact; now v0 is the oldest
        assert again is not second and host.get(versions[2].id) is third
        # and the models kept answer with their own boxes
        for i, detector in [(1, again), (2, third)]:
            box = detector.infer(image_bytes(64, 64)).boxes[0]
            assert box[1] == 8.0 * (i + 1) - 5.0
        assert host.get(versions[0].id) is not first
    finally:
        store.dispose()
