"""Monitoring counts summed per service-minute come back exact: panel, percentiles, /metrics."""

from __future__ import annotations

import uuid

import redis
from prometheus_client.parser import text_string_to_metric_families

from detserve.monitoring import counters as monitoring


def test_summed_counts_are_exact(stack):
    r = redis.Redis.from_url(stack.settings.redis_url)
    sid = uuid.uuid4().hex
    now = 1_800_000_000.0 - 1_800_000_000.0 % 60 + 30  # mid-minute
    # given five requests over two minutes, one failed and one without a model time
    samples = [(sid, 4.0, True, 3.0, now - 60), (sid, 20.0, True, 15.0, now),
               (sid, 30.0, False, None, now), (sid, 7.0, True, 6.0, now), (sid, 9000.0, True, 1.0, now)]
    # when they are written in one go
    monitoring.record_many(r, samples)
    # then the panel, its percentiles and the Prometheus totals agree with them one by one
    panel = monitoring.summary(r, sid, now=now)
    assert (panel["requests"], panel["failures"]) == (5, 1)
    assert [m["requests"] for m in panel["series"][-2:]] == [1, 4]
    assert panel["latency_ms"]["p50"] == 20.0 and panel["latency_ms"]["p99"] == 9000.0
    samples_of = _samples(monitoring.prometheus(r, lambda: {sid}))
    assert samples_of[("detserve_requests_total", sid, None)] == 5
    assert samples_of[("detserve_failures_total", sid, None)] == 1
    assert samples_of[("detserve_request_latency_seconds_bucket", sid, "0.005")] == 1
    assert samples_of[("detserve_request_latency_seconds_bucket", sid, "0.025")] == 3
    assert samples_of[("detserve_request_latency_seconds_bucket", sid, "10")] == 5
    assert samples_of[("detserve_request_latency_seconds_count", sid, None)] == 5
    assert samples_of[("detserve_inference_seconds_count", sid, None)] == 4
    # and a service that no longer exists is left out
    assert all(key[1] != sid for key in _samples(monitoring.prometheus(r, lambda: {"other"})))


def _samples(text: bytes) -> dict[tuple[str, str, str | None], float]:
    return {(s.name, s.labels["service"], s.labels.get("le")): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}
