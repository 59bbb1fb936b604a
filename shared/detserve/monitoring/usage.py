"""Resource figures of worker processes and the models they hold, reported beside the heartbeat.

Each worker process writes a sample every heartbeat period: its CPU seconds and resident memory
(psutil), each loaded model's own memory (the rise in resident memory while it loaded and warmed
up, which is approximate when other work runs meanwhile; device memory where the backend can
tell, e.g. a TensorRT engine's), and on GPU workers the device's utilisation and memory (NVML,
where nvidia-ml-py is installed). The API reads them per service (the workers holding its
version) and for /metrics.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psutil
import redis
from celery import signals
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from detserve.config import Settings

log = logging.getLogger("detserve.monitoring.usage")

LATEST = "detserve:usage:{worker}"  # the worker's last sample (JSON)
SERIES = "detserve:usage:series:{worker}"  # its samples of the last hour, scored by time
WORKERS = "detserve:usage:workers"  # worker -> time of its last sample
WINDOW_SECONDS = 3600
MAX_POINTS = 120  # a chart needs no more


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


class ModelMemory:
    """What each loaded model added to this process (and to the device, where known)."""

    def __init__(self) -> None:
        self._bytes: dict[int, dict[str, int | None]] = {}
        self._lock = threading.Lock()

    def loaded(self, version_id: int, rss_delta: int, backend: Any) -> None:
        device = getattr(backend, "device_memory_bytes", None)
        with self._lock:
            self._bytes[version_id] = {"bytes": max(0, rss_delta),
                                       "device_bytes": int(device) if device else None}

    def dropped(self, version_id: int) -> None:
        with self._lock:
            self._bytes.pop(version_id, None)

    def snapshot(self) -> dict[str, dict[str, int | None]]:
        with self._lock:
            return {str(k): dict(v) for k, v in self._bytes.items()}


def gpu_figures() -> dict[str, float] | None:
    """Utilisation (%) and memory of the first visible GPU, or None without NVML."""
    try:
        import pynvml  # nvidia-ml-py: optional, only GPU hosts have it
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {"utilization_percent": float(util.gpu), "memory_used_bytes": float(mem.used),
                "memory_total_bytes": float(mem.total)}
    except pynvml.NVMLError:
        return None


def sample(worker: str, flavor: str, memory: ModelMemory) -> dict[str, Any]:
    proc = psutil.Process()
    cpu = proc.cpu_times()
    return {"at": time.time(), "worker": worker, "flavor": flavor, "pid": os.getpid(),
            "cpu_seconds": round(cpu.user + cpu.system, 3), "rss_bytes": rss(),
            "gpu": gpu_figures(), "models": memory.snapshot()}


def report(client: redis.Redis, figures: dict[str, Any], period: float) -> None:
    worker, at = figures["worker"], figures["at"]
    text = json.dumps(figures)
    pipe = client.pipeline(transaction=False)
    pipe.set(LATEST.format(worker=worker), text, ex=max(10, int(3 * period)))
    pipe.zadd(SERIES.format(worker=worker), {text: at})
    pipe.zremrangebyscore(SERIES.format(worker=worker), "-inf", at - WINDOW_SECONDS)
    pipe.expire(SERIES.format(worker=worker), WINDOW_SECONDS + 60)
    pipe.zadd(WORKERS, {worker: at})
    pipe.zremrangebyscore(WORKERS, "-inf", at - WINDOW_SECONDS)
    pipe.execute()


class Reporter:
    """A daemon thread writing this process's sample every `period` seconds."""

    def __init__(self, redis_url: str, worker: str, flavor: str,
                 memory: Callable[[], ModelMemory], period: float) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.worker, self.flavor, self.memory, self.period = worker, flavor, memory, period
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="detserve-usage", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                report(self.client, sample(self.worker, self.flavor, self.memory()), self.period)
            except (redis.RedisError, psutil.Error) as exc:
                log.debug("usage not reported: %s", exc)
            self._stop.wait(self.period)


def connect_reporter(settings: Settings, flavor: str, memory: Callable[[], ModelMemory]) -> None:
    """Report from the worker once it is ready, under its heartbeat's name, until it stops."""
    reporter: dict[str, Reporter] = {}

    @signals.worker_ready.connect(weak=False)
    def _start(sender: Any = None, **_: Any) -> None:
        name = getattr(sender, "hostname", None) or f"{flavor}@{socket.gethostname()}"
        reporter["r"] = Reporter(settings.redis_url, name, flavor, memory,
                                 settings.heartbeat_seconds)
        reporter["r"].start()

    @signals.worker_shutdown.connect(weak=False)
    def _stop(**_: Any) -> None:
        if "r" in reporter:
            reporter["r"].stop()


# ---- readers (the API) -----------------------------------------------------------------------


def latest(client: redis.Redis) -> list[dict[str, Any]]:
    """The last sample of every worker that reported lately."""
    workers = [_text(w) for w in client.zrange(WORKERS, 0, -1)]
    texts = client.mget([LATEST.format(worker=w) for w in workers]) if workers else []
    return [json.loads(t) for t in texts if t]


def for_version(client: redis.Redis, version_ids: Iterable[int]) -> list[dict[str, Any]]:
    """Per worker holding any of the versions (a service may serve several, and then its model's
    memory is theirs together): its figures now and a series over the last hour."""
    wanted = [str(v) for v in version_ids]
    rows = []
    for figures in latest(client):
        held = [figures["models"][v] for v in wanted if v in figures["models"]]
        if not held:
            continue
        device = [m["device_bytes"] for m in held if m["device_bytes"] is not None]
        model_bytes = sum(m["bytes"] for m in held)
        texts = client.zrangebyscore(SERIES.format(worker=figures["worker"]),
                                     time.time() - WINDOW_SECONDS, "+inf")
        rows.append({"worker": figures["worker"], "flavor": figures["flavor"],
                     "pid": figures["pid"], "at": figures["at"],
                     "cpu_seconds": figures["cpu_seconds"], "rss_bytes": figures["rss_bytes"],
                     "model_bytes": model_bytes, "model_device_bytes": sum(device) if device else None,
                     "gpu": figures["gpu"], "series": series([json.loads(_text(t)) for t in texts])})
    return rows


def series(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CPU use (% of one core, from consecutive samples) and memory, at most MAX_POINTS."""
    points = []
    for before, after in zip(samples, samples[1:], strict=False):
        span = after["at"] - before["at"]
        if span <= 0 or before["pid"] != after["pid"]:
            continue  # a restarted worker's CPU seconds start again from zero
        gpu = after.get("gpu") or {}
        points.append({"at": after["at"],
                       "cpu_percent": round(100 * (after["cpu_seconds"] - before["cpu_seconds"])
                                            / span, 2),
                       "rss_bytes": after["rss_bytes"],
                       "gpu_utilization_percent": gpu.get("utilization_percent"),
                       "gpu_memory_used_bytes": gpu.get("memory_used_bytes")})
    step = max(1, -(-len(points) // MAX_POINTS))
    return points[::-1][::step][::-1]


def samples_for_metrics(client: redis.Redis) -> list[tuple[str, dict[str, str], float]]:
    """(metric name, labels, value) for /metrics: exposition-agnostic, so either the text
    renderer or a prometheus_client collector can take them."""
    out: list[tuple[str, dict[str, str], float]] = []
    for f in latest(client):
        labels = {"worker": f["worker"], "flavor": f["flavor"]}
        out.append(("detserve_worker_cpu_seconds_total", labels, f["cpu_seconds"]))
        out.append(("detserve_worker_resident_memory_bytes", labels, f["rss_bytes"]))
        for version_id, model in f["models"].items():
            out.append(("detserve_model_memory_bytes", {**labels, "version_id": version_id},
                        model["bytes"]))
            if model["device_bytes"]:
                out.append(("detserve_model_device_memory_bytes",
                            {**labels, "version_id": version_id}, model["device_bytes"]))
        if f["gpu"]:
            out.append(("detserve_gpu_utilization_percent", labels,
                        f["gpu"]["utilization_percent"]))
            out.append(("detserve_gpu_memory_used_bytes", labels, f["gpu"]["memory_used_bytes"]))
    return out


HELP = {
    "detserve_worker_cpu_seconds_total": "CPU seconds a worker process has used.",
    "detserve_worker_resident_memory_bytes": "A worker process's resident memory.",
    "detserve_model_memory_bytes": "Memory a loaded model took in a worker process (approximate).",
    "detserve_model_device_memory_bytes": "Device memory a loaded model's engine holds.",
    "detserve_gpu_utilization_percent": "Utilisation of a GPU worker's device.",
    "detserve_gpu_memory_used_bytes": "Memory used on a GPU worker's device.",
}


class UsageMetrics:
    """The workers' latest samples, read from Redis at each scrape, as a prometheus_client
    collector (a name ending in _total is a counter, the rest are gauges)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for name, labels, value in samples_for_metrics(self.client):
            family = families.get(name)
            if family is None:
                names, text = sorted(labels), HELP.get(name, name)
                family = families[name] = (
                    CounterMetricFamily(name, text, labels=names) if name.endswith("_total")
                    else GaugeMetricFamily(name, text, labels=names))
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
