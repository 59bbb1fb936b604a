"""Worker tasks (deploy, predict) and the per-process ModelHost, for any Backend class."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis
from celery import Celery, signals
from celery.exceptions import Ignore
from celery.states import READY_STATES

from detserve import tasknames as names
from detserve.celery_app import redis_client
from detserve.config import Settings
from detserve.inference.host import ModelHost
from detserve.lane.bus import UNLOAD_CHANNEL, CeleryBus
from detserve.lane.consumer import LaneConsumer
from detserve.monitoring import inflight, logs, usage
from detserve.monitoring.heartbeats import Identity, connect_heartbeat
from detserve.processing import headers as images
from detserve.processing.image import limit_pillow
from detserve.processing.options import AnswerOptions
from detserve.reconnect import Backoff
from detserve.service import progress
from detserve.service.artifacts import ArtifactStore
from detserve.service.deployments import Runtime, complete_deploy, versions_in_use
from detserve.service.rollout import complete_switch
from detserve.store import Store

log = logging.getLogger("detserve.inference.worker")


class WorkerState:
    """Per-process state, built lazily in the process that uses it (never before fork)."""

    def __init__(self, app: Celery, backend_cls: Any, settings: Settings) -> None:
        self.app, self.backend_cls, self.settings = app, backend_cls, settings
        self._pid = -1
        self._host: ModelHost | None = None
        self._redis: redis.Redis | None = None
        self.me = Identity()  # the name this worker beats under, once it is ready
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

    def claim(self, task_id: str, task: str, args: list[Any], queue: str) -> None:
        """Record a task as this worker's from the moment it is received (prefetched ones
        included) until it ends: what dies with this worker is sent again (inflight.py)."""
        if self.me.name is None:
            return
        try:
            inflight.claim(self.redis, task_id, task, args, queue, self.me.name)
        except redis.RedisError:
            log.warning("could not record in-flight task %s", task_id)

    @contextmanager
    def claimed(self, task_id: str) -> Iterator[None]:
        """Release the task's claim when it ends, however it ends."""
        try:
            yield
        finally:
            try:
                inflight.release(self.redis, task_id)
            except redis.RedisError:
                log.warning("could not release in-flight task %s; the sweep will", task_id)

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis_client(self.settings.redis_url)
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
        # the artifact token reads artifacts and nothing else; older setups gave workers the admin token
        artifacts = ArtifactStore(s.artifacts_dir, api_url=s.api_url,
                                  token=s.artifact_token or s.admin_token)
        return Runtime(Store(s.database_url), artifacts, CeleryBus(self.app), s.autostop_hour_seconds)


def register_worker_tasks(app: Celery, backend_cls: Any, settings: Settings, flavor: str) -> WorkerState:
    """Register worker.deploy and worker.predict on `app`, running models with `backend_cls`."""
    limit_pillow(settings.max_image_pixels)
    state = WorkerState(app, backend_cls, settings)

    @app.task(name=names.DEPLOY, bind=True, ignore_result=True)
    def deploy(self: Any, service_id: str) -> None:
        """Load the service's model in this process and move it to Running."""
        host = state.host
        with state.claimed(self.request.id), logs.about(service_id), \
                progress.deploying(state.redis, service_id, host.load) as load:
            complete_deploy(host.rt, service_id, load, host.drop)

    @app.task(name=names.SWITCH, bind=True, ignore_result=True)
    def switch(self: Any, service_id: str, token: str) -> None:
        """Load a Running service's new versions in this process, then make them its split."""
        host = state.host
        with state.claimed(self.request.id), logs.about(service_id):
            complete_switch(host.rt, service_id, token, host.load, host.drop,
                            unload_after=settings.predict_timeout)

    @app.task(name=names.PREDICT, bind=True)
    def predict(self: Any, version_id: int, image_key: str,
                options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Detect objects in the image kept under `image_key` (async predictions)."""
        task_id = self.request.id
        with state.claimed(task_id):
            try:
                # the image stays in Redis until the task ends, so a redelivery still finds it
                result = state.predict(version_id, images.read(state.redis, image_key), options)
                # which version answered: a service may serve several (service/traffic.py)
                return {**result, "version": state.host.version_number(version_id)}
            except images.ImageGone:
                if self.AsyncResult(task_id).state in READY_STATES:
                    raise Ignore() from None  # a stale second delivery of a finished task
                raise
            finally:
                with suppress(redis.RedisError):  # it expires anyway (the sweep prunes its entry)
                    images.drop(state.redis, image_key)

    @signals.task_received.connect(weak=False)
    def _claim(request: Any = None, **_: Any) -> None:
        if request is not None and request.name in (names.DEPLOY, names.PREDICT, names.SWITCH):
            state.claim(request.id, request.name, list(request.args), flavor)

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

    state.me = connect_heartbeat(settings, flavor)
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
    """Drop a model from this process when the last service using it stops; across any Redis
    outage, reconnect for as long as it takes and then drop what was unloaded meanwhile."""

    def run() -> None:
        backoff, never = Backoff(), threading.Event()
        while True:
            try:
                _listen(redis_url, host, backoff)
            except Exception as exc:  # noqa: BLE001 - Redis or the database down: keep trying
                log.warning("unload listener lost Redis (%s); reconnecting", exc)
            backoff.wait(never)

    threading.Thread(target=run, name="detserve-unload", daemon=True).start()


PING_SECONDS = 5.0  # a listener that hears nothing, not even its own pings, is on a dead link


def _listen(redis_url: str, host: ModelHost, backoff: Backoff) -> None:
    pubsub = redis_client(redis_url).pubsub()
    try:
        pubsub.subscribe(UNLOAD_CHANNEL)
        heard = pinged = time.monotonic()
        while True:
            now = time.monotonic()
            if now - pinged >= PING_SECONDS:
                pubsub.ping()
                pinged = now
            if now - heard > 3 * PING_SECONDS:
                raise redis.ConnectionError(f"no reply from Redis for {now - heard:.0f} s")
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            heard = now
            if message["type"] == "subscribe":
                backoff.reset()  # subscribed: from now on unloads reach us; drop those we missed
                host.keep_only(versions_in_use(host.rt))
            elif message["type"] == "message":
                _unload(host, message)
    finally:
        pubsub.close()


def _unload(host: ModelHost, message: dict[str, Any]) -> None:
    try:
        host.drop(int(json.loads(message["data"])["version_id"]))
    except (ValueError, KeyError, TypeError):
        log.warning("ignored a malformed unload message: %r", message)
