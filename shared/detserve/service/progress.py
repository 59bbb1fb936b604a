"""Deploy progress: what a deploy is doing and how far it is, for the service JSON and the console.

Transient, so it lives in Redis under the service id with a TTL (the database keeps only the
status). The API writes "queued" when it sends a deploy; the worker that takes it writes each
step after that (fetching, loading, building an engine, warming up) and the end: ready, or the
step that failed and why. The worker's code reports through `current()`, which is a no-op outside
a deploy (a model loaded on first use by another process reports nothing).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import redis

from detserve.errors import ModelLoadError, for_caller

KEY = "detserve:deploy:{}"
TTL_SECONDS = 24 * 3600
# step -> (what the user reads, the progress range the step covers)
STEPS: dict[str, tuple[str, int, int]] = {
    "queued": ("queued for a worker", 0, 0),
    "fetching": ("fetching the artifact", 2, 10),
    "loading": ("loading the model", 10, 20),
    "building_engine": ("building TensorRT engine", 20, 90),
    "warming_up": ("warming up", 90, 99),
    "ready": ("ready", 100, 100),
}


_PATH = re.compile(r"(?<![\w:/.])(?:[A-Za-z]:)?(?:[\\/][\w.\-]+)+[\\/]([\w.\-]+)")


def path_free(text: str) -> str:
    """`text` without the directories of any file it names: they are the worker host's (a URL's
    path stays)."""
    return _PATH.sub(r"\1", text)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class DeployProgress:
    """The record of one deploy of one service, written as it goes."""

    def __init__(self, client: redis.Redis, service_id: str) -> None:
        self.client, self.service_id = client, service_id
        self.record: dict[str, Any] = {}
        self._written, self._figure = 0.0, -1

    def queued(self) -> None:
        """A deploy was sent: a new record whose only step is the wait for a worker."""
        self.record = {"steps": [], "error": None, "engine": None}
        self.enter("queued")

    def taken(self) -> None:
        """A worker took the deploy: keep the queued step the API wrote, if this deploy's."""
        old = read(self.client, self.service_id)
        if old and old["steps"] and old["steps"][-1]["name"] == "queued":
            self.record = old
        else:
            self.record = {"steps": [], "error": None, "engine": None}

    def enter(self, step: str, detail: str | None = None, **facts: Any) -> None:
        """A new step starts, e.g. enter("fetching", bytes_total=n)."""
        label, low, _ = STEPS[step]
        now = time.time()
        self.record["steps"].append({"name": step, "label": label, "detail": detail, "at": _iso(now),
                                     "started": now, "progress": low, **facts})
        self._write(force=True)

    def advance(self, fraction: float, detail: str | None = None, **facts: Any) -> None:
        """The current step is `fraction` (0..1) done."""
        step = self.record["steps"][-1]
        _, low, high = STEPS[step["name"]]
        step["progress"] = max(step["progress"], low + round((high - low) * min(1.0, fraction)))
        if detail is not None:
            step["detail"] = detail
        step.update(facts)
        self._write(force=False)

    def fail(self, message: str) -> str:
        """The current step failed; returns the service's error: which step, and why."""
        step = self.record["steps"][-1] if self.record.get("steps") else None
        label = step["label"] if step else "deploying"
        if step:
            step["failed"] = True
        self.record["error"] = f"{label} failed: {path_free(message)}"
        self._write(force=True)
        return str(self.record["error"])

    def done(self, engine: dict[str, Any] | None) -> None:
        self.record["engine"] = engine
        self.enter("ready")

    def _write(self, force: bool) -> None:
        # a build reports thousands of steps: write when the figure moves, or once a second
        steps = self.record.get("steps") or [{"progress": 0}]
        now, figure = time.monotonic(), steps[-1]["progress"]
        if not force and figure == self._figure and now - self._written < 1.0:
            return
        self._written, self._figure = now, figure
        self.client.set(KEY.format(self.service_id), json.dumps(self.record), ex=TTL_SECONDS)


def read(client: redis.Redis, service_id: str) -> dict[str, Any] | None:
    return read_many(client, [service_id]).get(service_id)


def read_many(client: redis.Redis, service_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The records of these services that exist, by id (one round trip)."""
    if not service_ids:
        return {}
    values = client.mget([KEY.format(s) for s in service_ids])
    return {sid: json.loads(v) for sid, v in zip(service_ids, values, strict=True) if v}


def view(record: dict[str, Any] | None, status: str) -> dict[str, Any]:
    """The service JSON's `progress`, `phase`, `deploy_steps` and `engine` for this record."""
    if not record or not record.get("steps") or status not in ("Deploying", "Running", "Failed"):
        return {"progress": None, "phase": None, "deploy_steps": [], "engine": None}
    steps = record["steps"]
    last = steps[-1]
    if status == "Deploying" and last["name"] == "ready":  # a redeploy nobody queued (a restart)
        return {"progress": None, "phase": None, "deploy_steps": [], "engine": None}
    phase = {"name": last["name"], "label": last["label"], "detail": last.get("detail"),
             "started_at": last["at"], "elapsed_seconds": round(time.time() - last["started"], 1),
             "failed": bool(last.get("failed")), "bytes_done": last.get("bytes_done"),
             "bytes_total": last.get("bytes_total")}
    return {"progress": last["progress"], "phase": phase,
            "deploy_steps": [{"name": s["name"], "label": s["label"], "detail": s.get("detail"),
                              "at": s["at"], "progress": s["progress"],
                              "failed": bool(s.get("failed"))} for s in steps],
            "engine": record.get("engine")}


class _Silent:
    """What code outside a deploy reports to: nothing."""

    def enter(self, step: str, detail: str | None = None, **facts: Any) -> None:
        pass

    def advance(self, fraction: float, detail: str | None = None, **facts: Any) -> None:
        pass


_current: ContextVar[DeployProgress | None] = ContextVar("detserve_deploy_progress", default=None)


def current() -> DeployProgress | _Silent:
    """The deploy this thread is doing, or a reporter that records nothing."""
    return _current.get() or _Silent()


@contextmanager
def deploying(client: redis.Redis, service_id: str,
              load: Callable[[Any], Any]) -> Iterator[Callable[[Any], None]]:
    """The worker's deploy of `service_id`: gives `load` wrapped so that its steps are recorded,
    the engine it built too, and a failure names its step (a ModelLoadError saying which)."""
    record = DeployProgress(client, service_id)
    record.taken()

    def recorded(version: Any) -> None:
        try:
            backend = load(version).backend
        except Exception as exc:  # the service's error names the step that failed
            # what a caller may read of it: ours scrubbed, anything else an incident (errors.py)
            raise ModelLoadError(record.fail(for_caller(exc, "this step").message)) from exc
        describe = getattr(backend, "describe", None)
        record.done(describe() if describe else None)  # ready before Running is visible

    token = _current.set(record)
    try:
        yield recorded
    finally:
        _current.reset(token)
