"""Per-service request counters in Redis, by minute, so every API process sees the same numbers.

A service serving several versions (service/traffic.py) has its counts also kept per version, as
fields `v<N>:requests` and `v<N>:failures` of the same hashes: the per-service totals are what
they always were, and the versions' counts add up to them (a request no version was chosen for,
such as one refused before, counts only for the service).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from detserve.service import idle

WINDOW_MINUTES = 60
KEEP_SECONDS = 2 * 3600
MAX_SAMPLES = 2000  # latencies kept per service-minute for percentiles
log = logging.getLogger("detserve.monitoring.counters")

BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def _minute(ts: float) -> int:
    return int(ts // 60) * 60


@dataclass
class _Tally:
    """One service-minute's requests, summed before they are written."""

    requests: int = 0
    failures: int = 0
    latencies: list[float] = field(default_factory=list)
    buckets: Counter[str] = field(default_factory=Counter)
    latency_sum: float = 0.0
    inference_sum: float = 0.0
    inference_count: int = 0
    versions: Counter[str] = field(default_factory=Counter)  # "v3:requests" -> n

    def add(self, latency_ms: float, ok: bool, inference_ms: float | None,
            version: int | None = None) -> None:
        self.requests += 1
        self.failures += 0 if ok else 1
        if version is not None:
            self.versions[f"v{version}:requests"] += 1
            self.versions[f"v{version}:failures"] += 0 if ok else 1
        self.latencies.append(round(latency_ms, 3))
        self.buckets[str(next((b for b in BUCKETS_MS if latency_ms <= b), "inf"))] += 1
        self.latency_sum += latency_ms
        if inference_ms is not None:
            self.inference_sum += inference_ms
            self.inference_count += 1

    def write(self, pipe: Any, service_id: str, minute: int) -> None:
        stats, lat = f"detserve:mon:{service_id}:{minute}", f"detserve:lat:{service_id}:{minute}"
        total = f"detserve:metrics:{service_id}"
        for key in (stats, total):
            pipe.hincrby(key, "requests", self.requests)
            if self.failures:
                pipe.hincrby(key, "failures", self.failures)
            for name, n in self.versions.items():
                if n:
                    pipe.hincrby(key, name, n)
        pipe.rpush(lat, *self.latencies)
        pipe.ltrim(lat, -MAX_SAMPLES, -1)
        pipe.expire(stats, KEEP_SECONDS)
        pipe.expire(lat, KEEP_SECONDS)
        for bucket, n in self.buckets.items():
            pipe.hincrby(total, f"le_{bucket}", n)
        pipe.hincrbyfloat(total, "latency_sum_ms", self.latency_sum)
        if self.inference_count:
            pipe.hincrbyfloat(total, "inference_sum_ms", self.inference_sum)
            pipe.hincrby(total, "inference_count", self.inference_count)
        pipe.sadd("detserve:metrics:services", service_id)


# service, latency, ok, inference, time[, version]
Sample = tuple[str, float, bool, "float | None", float] | tuple[
    str, float, bool, "float | None", float, "int | None"]


def record_many(client: redis.Redis, samples: list[Sample]) -> None:
    """Count prediction requests, summed per service-minute, in one round trip."""
    tallies: dict[tuple[str, int], _Tally] = {}
    last: dict[str, float] = {}  # the idle auto stop counts from each service's last prediction
    for sample in samples:
        service_id, latency_ms, ok, inference_ms, ts = sample[:5]
        version = sample[5] if len(sample) > 5 else None
        tallies.setdefault((service_id, _minute(ts)), _Tally()).add(latency_ms, ok, inference_ms,
                                                                     version)
        last[service_id] = max(ts, last.get(service_id, 0.0))
    pipe = client.pipeline(transaction=False)
    idle.touch(pipe, last)
    for (service_id, minute), tally in tallies.items():
        tally.write(pipe, service_id, minute)
    pipe.execute()


class Recorder:
    """Counts requests from a background thread of this process, many per round trip.

    A request only appends to an in-memory queue: the Redis writes happen after its answer has
    gone, summed per service-minute, so under load one short pipeline carries many requests. The
    counts are visible in Redis within a second; a process that dies loses the ones not yet written.
    """

    BATCH = 500
    GATHER_SECONDS = 0.25

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._queue: queue.SimpleQueue[Sample] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid = -1

    def record(self, service_id: str, latency_ms: float, ok: bool,
               inference_ms: float | None = None, version: int | None = None) -> None:
        if self._pid != os.getpid():  # first use in this process (a gunicorn worker forks)
            self._start()
        self._queue.put((service_id, latency_ms, ok, inference_ms, time.time(), version))

    def _start(self) -> None:
        with self._lock:
            if self._pid != os.getpid():
                threading.Thread(target=self._run, name="detserve-monitoring", daemon=True).start()
                self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            # gather for a moment: the write then seldom lands while another request is being
            # answered (on 2 cores it would take the GIL and a core from it), and carries more
            time.sleep(self.GATHER_SECONDS)
            while len(items) < self.BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                record_many(self.client, items)
            except redis.RedisError as exc:
                log.warning("monitoring: %d request counts lost (%s)", len(items), exc)


def summary(client: redis.Redis, service_id: str, now: float | None = None) -> dict[str, Any]:
    """Requests, failures and latency percentiles over the last hour, with a per-minute series."""
    end = _minute(now if now is not None else time.time())
    minutes = [end - 60 * i for i in range(WINDOW_MINUTES - 1, -1, -1)]
    pipe = client.pipeline(transaction=False)
    for m in minutes:
        pipe.hgetall(f"detserve:mon:{service_id}:{m}")
        pipe.lrange(f"detserve:lat:{service_id}:{m}", 0, -1)
    replies = pipe.execute()
    series, everything = [], []
    requests = failures = 0
    versions: Counter[str] = Counter()
    for i, m in enumerate(minutes):
        stats, lats = replies[2 * i], [float(x) for x in replies[2 * i + 1]]
        req, fail = int(stats.get(b"requests", 0)), int(stats.get(b"failures", 0))
        requests, failures = requests + req, failures + fail
        minute = version_counts(stats)
        versions.update(minute)
        everything.extend(lats)
        series.append({"minute": time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(m)),
                       "requests": req, "failures": fail, "p50_ms": _pct(lats, 50),
                       "versions": by_version(minute)})
    return {"requests": requests, "failures": failures,
            "latency_ms": {"p50": _pct(everything, 50), "p95": _pct(everything, 95),
                           "p99": _pct(everything, 99)},
            "versions": by_version(versions),
            "series": series}


_VERSION_FIELD = re.compile(r"v(\d+):(?:requests|failures)")


def version_counts(stats: dict[Any, Any]) -> Counter[str]:
    """The `v<N>:...` counts of a Redis hash, by field name."""
    named = ((_text(k), v) for k, v in stats.items())
    return Counter({k: int(v) for k, v in named if k.startswith("v")})


def by_version(fields: Counter[str]) -> list[dict[str, int]]:
    """[{"version", "requests", "failures"}] from `v<N>:requests`/`v<N>:failures` counts."""
    numbers = sorted({int(m.group(1)) for m in map(_VERSION_FIELD.fullmatch, fields) if m})
    return [{"version": n, "requests": fields.get(f"v{n}:requests", 0),
             "failures": fields.get(f"v{n}:failures", 0)} for n in numbers]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[idx], 3)


class ServiceMetrics:
    """The prediction totals of the services in `live()` (deleted ones are left out), read from
    Redis at each scrape, as a prometheus_client collector."""

    def __init__(self, client: redis.Redis, live: Callable[[], set[str]]) -> None:
        self.client, self.live = client, live

    def collect(self) -> Iterator[Metric]:
        known = {_text(x) for x in self.client.smembers("detserve:metrics:services")}
        ids = sorted(known & self.live())
        pipe = self.client.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(f"detserve:metrics:{sid}")
        rows = dict(zip(ids, pipe.execute(), strict=True))
        requests = CounterMetricFamily("detserve_requests", "Prediction requests per service.",
                                       labels=["service"])
        failures = CounterMetricFamily("detserve_failures",
                                       "Failed prediction requests per service.", labels=["service"])
        latency = HistogramMetricFamily("detserve_request_latency_seconds",
                                        "Prediction request latency seen by the API.",
                                        labels=["service"])
        inference = SummaryMetricFamily("detserve_inference_seconds",
                                        "Time the workers spent in the model pipeline.",
                                        labels=["service"])
        version_requests = CounterMetricFamily(
            "detserve_version_requests", "Prediction requests per service and model version.",
            labels=["service", "version"])
        version_failures = CounterMetricFamily(
            "detserve_version_failures", "Failed prediction requests per service and model "
            "version.", labels=["service", "version"])
        for sid, r in rows.items():
            requests.add_metric([sid], int(r.get(b"requests", 0)))
            failures.add_metric([sid], int(r.get(b"failures", 0)))
            buckets, cumulative = [], 0
            for b in (*(str(ms) for ms in BUCKETS_MS), "inf"):
                cumulative += int(r.get(f"le_{b}".encode(), 0))
                buckets.append(("+Inf" if b == "inf" else f"{int(b) / 1000:g}", cumulative))
            latency.add_metric([sid], buckets, float(r.get(b"latency_sum_ms", 0)) / 1000)
            inference.add_metric([sid], int(r.get(b"inference_count", 0)),
                                 float(r.get(b"inference_sum_ms", 0)) / 1000)
            for v in by_version(version_counts(r)):
                version_requests.add_metric([sid, str(v["version"])], v["requests"])
                version_failures.add_metric([sid, str(v["version"])], v["failures"])
        yield from (requests, failures, latency, inference, version_requests, version_failures)


def prometheus(client: redis.Redis, live: Callable[[], set[str]], *more: Collector) -> bytes:
    """Prometheus text exposition of the live services' totals, and of `more` collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceMetrics(client, live))
    for collector in more:
        registry.register(collector)
    return generate_latest(registry)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
