"""Parts of operating a service: log windows, the stopping-soon rule, usage series and their
Prometheus metrics."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from conftest import scratch_redis_url
from detserve.errors import ValidationFailed
from detserve.monitoring import usage
from detserve.service import idle
from detserve.store import Service
from detserve_api.resources.services.operate import parse_since

NOW = 1_800_000_000.0
HOUR = 3600.0


@pytest.mark.parametrize(("since", "expected"), [
    ("5m", NOW - 300), ("30m", NOW - 1800), ("60m", NOW - 3600),
    ("2027-01-15T08:00:00Z", datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()),
    ("2027-01-15T08:00:00", datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()),  # UTC if no zone
    ("2027-01-15T10:00:00+02:00", datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()),
])
def test_since_windows_and_times(since, expected):
    assert parse_since(since, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize("since", ["10m", "1h", "", "yesterday", "2027-13-01"])
def test_other_since_values_name_the_field(since):
    with pytest.raises(ValidationFailed) as err:
        parse_since(since, now=NOW)
    assert "since" in err.value.fields and "5m, 30m, 60m" in err.value.message


def service(**kw) -> Service:
    start = datetime(2027, 1, 1, tzinfo=UTC)
    fields = dict(id="s", status="Running", running_since=start, updated_at=start, stop_at=None,
                  stop_token=None, auto_stop_idle_minutes=None)
    return Service(**{**fields, **kw})


def test_the_nearer_stop_wins_and_warns_ten_minutes_before():
    svc = service(stop_at=datetime(2027, 1, 1, 1, tzinfo=UTC), auto_stop_idle_minutes=30)
    last = datetime(2027, 1, 1, 0, 40, tzinfo=UTC).timestamp()
    stop = idle.next_stop(svc, last, HOUR)
    assert stop == idle.NextStop(datetime(2027, 1, 1, 1, tzinfo=UTC), "auto_stop")
    assert not idle.stopping_soon(stop, HOUR, datetime(2027, 1, 1, 0, 49, 59, tzinfo=UTC))
    assert idle.stopping_soon(stop, HOUR, datetime(2027, 1, 1, 0, 50, tzinfo=UTC))
    # no prediction: idle counts from Running
    assert idle.next_stop(svc, None, HOUR).kind == "idle"


def test_a_shrunk_hour_shrinks_the_idle_time_and_the_warning():
    svc = service(auto_stop_idle_minutes=30)
    assert idle.idle_stop_at(svc, None, 60.0) == svc.running_since + timedelta(seconds=30)
    assert idle.minutes(60.0, idle.WARN_MINUTES) == timedelta(seconds=10)


def test_the_warning_header_counts_the_prediction_it_answers():
    svc = service(auto_stop_idle_minutes=30)  # idle for hours: but this prediction resets it
    assert idle.warning(svc, HOUR, datetime(2027, 1, 1, 5, tzinfo=UTC)) is None
    short = service(auto_stop_idle_minutes=5)
    assert idle.warning(short, HOUR, datetime(2027, 1, 1, 5, tzinfo=UTC)) == \
        '299 - "service stops at 2027-01-01T05:05:00Z"'
    assert idle.next_stop(service(status="Stopped", auto_stop_idle_minutes=5), None, HOUR) is None


def test_usage_series_is_cpu_percent_and_skips_a_restart():
    samples = [{"at": 0, "pid": 1, "cpu_seconds": 1.0, "rss_bytes": 10, "gpu": None},
               {"at": 2, "pid": 1, "cpu_seconds": 2.0, "rss_bytes": 11, "gpu": None},
               {"at": 4, "pid": 2, "cpu_seconds": 0.1, "rss_bytes": 5, "gpu": None},
               {"at": 6, "pid": 2, "cpu_seconds": 0.5, "rss_bytes": 6,
                "gpu": {"utilization_percent": 40.0, "memory_used_bytes": 7.0}}]
    points = usage.series(samples)
    assert [(p["at"], p["cpu_percent"]) for p in points] == [(2, 50.0), (6, 20.0)]
    assert points[-1]["gpu_utilization_percent"] == 40.0
    many = [{"at": i, "pid": 1, "cpu_seconds": i, "rss_bytes": 1, "gpu": None} for i in range(1000)]
    assert len(usage.series(many)) <= usage.MAX_POINTS and usage.series(many)[-1]["at"] == 999


def test_usage_metrics_through_prometheus_client(redis_base):
    client = redis.Redis.from_url(scratch_redis_url(redis_base))
    client.flushdb()
    figures = {"worker": "w1", "flavor": "cpu", "at": time.time(), "cpu_seconds": 2.5,
               "rss_bytes": 1000, "models": {"7": {"bytes": 300, "device_bytes": 0}}, "gpu": None}
    usage.report(client, figures, period=5.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(usage.UsageMetrics(client))
    text = generate_latest(registry).decode()
    assert 'detserve_worker_cpu_seconds_total{flavor="cpu",worker="w1"} 2.5' in text
    assert 'detserve_worker_resident_memory_bytes{flavor="cpu",worker="w1"} 1000.0' in text
    assert 'detserve_model_memory_bytes{flavor="cpu",version_id="7",worker="w1"} 300.0' in text
    assert "# TYPE detserve_worker_cpu_seconds_total counter" in text
    assert "detserve_model_device_memory_bytes" not in text
