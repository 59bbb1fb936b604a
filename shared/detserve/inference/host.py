"""ModelHost: the detectors loaded in one worker process, by version id.

Each version is loaded once per process however many first requests arrive together (the others
wait for that one load), and a detector is closed only once no call is using it: one that is
replaced, evicted or unloaded while predictions run is retired, and the last of those
predictions closes it. A caller never meets a half-closed session.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from detserve.config import Settings
from detserve.errors import NotFound, Unavailable
from detserve.inference.batching import Batcher
from detserve.inference.detector import Detections, Detector, Limits, Prepared
from detserve.monitoring import usage
from detserve.processing.options import AnswerOptions
from detserve.service import externaldata, progress
from detserve.service.deployments import Runtime
from detserve.store import ModelVersion

log = logging.getLogger("detserve.inference.host")


class Loaded:
    """One loaded version: its detector, its batcher, and how many calls are using it."""

    def __init__(self, detector: Detector, batcher: Batcher[Prepared, list[Any]] | None,
                 number: int) -> None:
        self.detector, self.batcher = detector, batcher
        self.number = number  # the version's number within its model
        self.users = 0
        self.retired = False

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.detector.backend.close()


class ModelHost:
    """Loaded detectors of this process, by version id, least recently used dropped first."""

    def __init__(self, rt: Runtime, backend_cls: Any, settings: Settings) -> None:
        self.rt, self.backend_cls, self.settings = rt, backend_cls, settings
        self.limits = Limits(settings.max_image_bytes, settings.max_image_pixels)
        self.loads: Counter[int] = Counter()  # loads per version in this process
        self._models: OrderedDict[int, Loaded] = OrderedDict()
        self._loading: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()
        self.memory = usage.ModelMemory()

    def cached(self) -> list[int]:
        """The version ids loaded now, least recently used first."""
        with self._lock:
            return list(self._models)

    def load(self, version: ModelVersion) -> Detector:
        """The version's detector: cached, or fetched, verified, built and warmed up once while
        any other caller wanting the same version waits for that one load."""
        with self._lock:
            gate = self._loading.setdefault(version.id, threading.Lock())
        with gate:
            with self._lock:
                entry = self._models.get(version.id)
                if entry is not None:
                    self._models.move_to_end(version.id)
                    return entry.detector
            entry = self._build(version)
            with self._lock:
                self._models[version.id] = entry
                while len(self._models) > self.settings.model_cache_size:
                    old_id, old = self._models.popitem(last=False)
                    self._retire_locked(old)
                    self.memory.dropped(old_id)
        return entry.detector

    def version_number(self, version_id: int) -> int | None:
        """The number (within its model) of a version id, from what is loaded or the store."""
        with self._lock:
            entry = self._models.get(version_id)
        if entry is not None:
            return entry.number
        with self.rt.store.session(readonly=True) as session:
            version = session.get(ModelVersion, version_id)
        return version.version if version is not None else None

    def get(self, version_id: int) -> Detector:
        """The detector of a version, loaded on first use in this process."""
        with self._lease(version_id) as entry:
            return entry.detector

    def detect(self, version_id: int, image: bytes,
               options: AnswerOptions | None = None) -> Detections:
        """One image through the version's detector, batched with others where the engine can."""
        with self._lease(version_id) as entry:
            if entry.batcher is None:
                return entry.detector.infer(image, options)
            prepared = entry.detector.prepare(image)  # in this thread, in parallel with others
            raw = entry.batcher(prepared, timeout=self.settings.predict_timeout)
            return entry.detector.finish(raw, prepared, options)

    def drop(self, version_id: int) -> None:
        """Unload a version: at once if idle, else when its last running call ends."""
        with self._lock:
            entry = self._models.pop(version_id, None)
            if entry is not None:
                self._retire_locked(entry)
        if entry is not None:
            self.memory.dropped(version_id)
            log.info("unloaded model version %s", version_id)

    def keep_only(self, version_ids: set[int]) -> None:
        """Drop every loaded version not in `version_ids` (unloads missed while disconnected)."""
        for version_id in set(self.cached()) - version_ids:
            self.drop(version_id)

    @contextmanager
    def _lease(self, version_id: int) -> Iterator[Loaded]:
        entry = self._acquire(version_id)
        try:
            yield entry
        finally:
            with self._lock:
                entry.users -= 1
                done = entry.retired and entry.users == 0
            if done:
                entry.close()

    def _acquire(self, version_id: int) -> Loaded:
        for _ in range(3):  # a version unloaded between its load and our lease loads again
            with self._lock:
                entry = self._models.get(version_id)
                if entry is not None:
                    entry.users += 1
                    self._models.move_to_end(version_id)
                    return entry
            with self.rt.store.session(readonly=True) as session:
                version = session.get(ModelVersion, version_id)
            if version is None:
                raise NotFound(f"model version {version_id} no longer exists")
            self.load(version)
        raise Unavailable(f"model version {version_id} was unloaded while loading; send it again")

    def _retire_locked(self, entry: Loaded) -> None:
        entry.retired = True
        if entry.users == 0:
            # closing an idle detector is quick (no call holds it), so the lock is held
            entry.close()

    def _build(self, version: ModelVersion) -> Loaded:
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
        self.loads[version.id] += 1
        detector = Detector(backend, {"labels": version.labels, **spec}, self.limits)
        report.enter("warming_up")
        detector.warm_up()
        self.memory.loaded(version.id, usage.rss() - before, backend)
        max_batch = int(getattr(backend, "max_batch", 1))
        batcher = None
        if max_batch > 1:
            batcher = Batcher(detector.infer_batch, max_batch=max_batch,
                              window=self.settings.batch_window_ms / 1000,
                              name=f"batcher-v{version.id}")
        return Loaded(detector, batcher, version.version)
