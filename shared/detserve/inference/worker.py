"""Worker tasks (deploy, predict) and the per-process ModelHost, for any Backend class."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any

import redis
from celery import Celery, signals

from detserve import tasknames as names
from detserve.config import Settings, admin_token
from detserve.errors import NotFound
from detserve.inference.batching import Batcher
from detserve.inference.detector import Detections, Detector, Limits, Prepared
from detserve.lane.bus import UNLOAD_CHANNEL, CeleryBus
from detserve.lane.consumer import LaneConsumer
from detserve.monitoring import logs, usage
from detserve.monitoring.heartbeats import connect_heartbeat
from detserve.processing import headers as images
from detserve.processing.image import limit_pillow
from detserve.processing.options import AnswerOptions
from detserve.service import externaldata, progress
from detserve.service.artifacts import ArtifactStore
from detserve.service.deployments import Runtime, complete_deploy
from detserve.store import ModelVersion, Store

log = logging.getLogger("detserve.inference.worker")


class ModelHost:
    """Loaded detectors of this process, by version id, least recently used dropped first."""

    def __init__(self, rt: Runtime, backend_cls: Any, settings: Settings) -> None:
        self.rt, self.backend_cls, self.settings = rt, backend_cls, settings
        self.limits = Limits(settings.max_image_bytes, settings.max_image_pixels)
        self._models: OrderedDict[int, Detector] = OrderedDict()
        self._batchers: dict[int, Batcher[Prepared, list[Any]]] = {}
        self._lock = threading.Lock()
        self.memory = usage.ModelMemory()

    def get(self, version_id: int) -> Detector:
        """The detector of a version, loading it on first use in this process."""
        with self._lock:
            detector = self._models.get(version_id)
            if detector is not None:
                self._models.move_to_end(version_id)
                return detector
        with self.rt.store.session(readonly=True) as session:
            version = session.get(ModelVersion, version_id)
        if version is None:
            raise NotFound(f"model version {version_id} no longer exists")
        return self.load(version)

    def load(self, version: ModelVersion) -> Detector:
        """Fetch and verify the artifact, build the backend, warm it up, cache it."""
        before = usage.rss()
        report = progress.current()
        report.enter("fetching", bytes_total=version.size_bytes)
        data = self.rt.artifacts.get(version.sha256)
        report.advance(1.0, bytes_done=len(data))
        report.enter("loading")
        externaldata.refuse_external(data)
        spec = {"input": version.input, "output": version.output}
        log.info("loading %s v%s (%s) with %s", version.model, version.version,
                 version.sha256[:12], self.backend_cls.__name__)
        backend = self.backend_cls.from_package(
            data, spec, threads=self.settings.ort_threads, settings=self.settings,
            artifacts=self.rt.artifacts, sha256=version.sha256)
        detector = Detector(backend, {"labels": version.labels, **spec}, self.limits)
        report.enter("warming_up")
        detector.warm_up()
        self.memory.loaded(version.id, usage.rss() - before, backend)
        max_batch = int(getattr(backend, "max_batch", 1))
        if max_batch > 1:
            self._batchers[version.id] = Batcher(
                detector.infer_batch, max_batch=max_batch,
                window=self.settings.batch_window_ms / 1000, name=f"batcher-v{version.id}")
        with self._lock:
            self._models[version.id] = detector
            self._models.move_to_end(version.id)
            while len(self._models) > self.settings.model_cache_size:
                old_id, _ = next(iter(self._models.items()))
                self._drop_locked(old_id)
        return detector

    def detect(self, version_id: int, image: bytes,
               options: AnswerOptions | None = None) -> Detections:
        """One image through the version's detector, batched with others where the engine can."""
        detector = self.get(version_id)
        batcher = self._batchers.get(version_id)
        if batcher is None:
            return detector.infer(image, options)
        prepared = detector.prepare(image)  # in this task's thread, in parallel with others
        return detector.finish(batcher(prepared), prepared, options)

    def drop(self, version_id: int) -> None:
        with self._lock:
            if self._drop_locked(version_id):
                log.info("unloaded model version %s", version_id)

    def _drop_locked(self, version_id: int) -> bool:
        detector = self._models.pop(version_id, None)
        batcher = self._batchers.pop(version_id, None)
        if batcher is not None:
            batcher.close()
        if detector is not None:
            detector.backend.close()
            self.memory.dropped(version_id)
        return detector is not None


class WorkerState:
    """Per-process state, built lazily in the process that uses it (never before fork)."""

    def __init__(self, app: Celery, backend_cls: Any, settings: Settings) -> None:
        self.app, self.backend_cls, self.settings = app, backend_cls, settings
        self._pid = -1
        self._host: ModelHost | None = None
        self._redis: redis.Redis | None = None
        self.concurrency = 0  # fixed once by start()
        self._slots: threading.BoundedSemaphore | None = None

    def start(self, concurrency: int) -> None:
        """Fix the concurrency, once, before any task runs (worker_init): the pool's threads
        and the lane's together run at most this many predictions at once."""
        if self._slots is not None:
            raise RuntimeError("the worker's concurrency is fixed once")
        self.concurrency = concurrency
        self._slots = threading.BoundedSemaphore(concurrency)

    def predict(self, version_id: int, image: bytes,
                options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The contract's result for one image, with the worker-side time in `inference_ms`;
        `options`: the request's answer options (AnswerOptions.to_dict)."""
        if self._slots is None:
            raise RuntimeError("WorkerState.start() runs first (at worker_init)")
        with self._slots:
            started = time.perf_counter()
            result = self.host.detect(version_id, image,
                                      AnswerOptions.from_dict(options)).to_dict()
        result["inference_ms"] = round((time.perf_counter() - started) * 1000, 3)
        logs.access("predicted %d objects in %.1f ms", len(result["detection_classes"]),
                    result["inference_ms"])
        return result

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=10,
                                               socket_connect_timeout=5)
        return self._redis

    @property
    def host(self) -> ModelHost:
        if self._host is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._host = ModelHost(self._runtime(), self.backend_cls, self.settings)
            _listen_for_unloads(self.settings.redis_url, self._host)
        return self._host

    def _runtime(self) -> Runtime:
        s = self.settings
        artifacts = ArtifactStore(s.artifacts_dir, api_url=s.api_url, token=admin_token(s))
        return Runtime(Store(s.database_url), artifacts, CeleryBus(self.app), s.autostop_hour_seconds)


def register_worker_tasks(app: Celery, backend_cls: Any, settings: Settings, flavor: str) -> WorkerState:
    """Register worker.deploy and worker.predict on `app`, running models with `backend_cls`."""
    limit_pillow(settings.max_image_pixels)
    state = WorkerState(app, backend_cls, settings)

    @app.task(name=names.DEPLOY, ignore_result=True)
    def deploy(service_id: str) -> None:
        """Load the service's model in this process and move it to Running."""
        host = state.host
        with logs.about(service_id), progress.deploying(state.redis, service_id, host.load) as load:
            complete_deploy(host.rt, service_id, load)

    @app.task(name=names.PREDICT)
    def predict(version_id: int, image_key: str,
                options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Detect objects in the image kept under `image_key` (async predictions)."""
        return state.predict(version_id, images.take(state.redis, image_key), options)

    lane: dict[str, LaneConsumer] = {}

    @signals.worker_init.connect(weak=False)
    def _fix_concurrency(sender: Any = None, **_: Any) -> None:
        concurrency = getattr(sender, "concurrency", None)
        state.start(concurrency if isinstance(concurrency, int) and concurrency > 0
                    else settings.worker_concurrency)

    @signals.worker_ready.connect(weak=False)
    def _start_lane(**_: Any) -> None:
        # as many lane threads as pool threads: sync and async predictions share the slots
        lane["consumer"] = LaneConsumer(settings.redis_url, flavor, state.predict,
                                        state.concurrency, settings.shm_dir)
        lane["consumer"].start()

    @signals.worker_shutting_down.connect(weak=False)
    def _stop_lane(**_: Any) -> None:
        if "consumer" in lane:
            lane["consumer"].stop()  # in the signal handler: only raises a flag

    @signals.worker_shutdown.connect(weak=False)
    def _drain_lane(**_: Any) -> None:
        if "consumer" in lane:
            lane["consumer"].stop()
            lane["consumer"].join()

    connect_heartbeat(settings, flavor)
    logs.install(settings.redis_url, f"worker-{flavor}")
    usage.connect_reporter(settings, flavor, lambda: state.host.memory)
    signals.after_setup_logger.connect(_quiet_per_task_logs, weak=False)
    return state


def _quiet_per_task_logs(**_: Any) -> None:
    # "received" and "succeeded" for every prediction are noise at hundreds a second (Flower
    # and /metrics show them); deploys, unloads and failures are still logged.
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _listen_for_unloads(redis_url: str, host: ModelHost) -> None:
    """Drop a model from this process when the last service using it stops."""

    def run() -> None:
        pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(UNLOAD_CHANNEL)
        for message in pubsub.listen():
            try:
                host.drop(int(json.loads(message["data"])["version_id"]))
            except (ValueError, KeyError, TypeError):
                log.warning("ignored a malformed unload message: %r", message)

    threading.Thread(target=run, name="detserve-unload", daemon=True).start()
