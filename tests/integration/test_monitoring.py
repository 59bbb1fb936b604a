"""Monitoring counts summed per service-minute come back exact: panel, percentiles, /metrics."""

from __future__ import annotations

import uuid

import redis

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
    text = monitoring.prometheus(r)
    assert f'detserve_requests_total{{service="{sid}"}} 5' in text
    assert f'detserve_failures_total{{service="{sid}"}} 1' in text
    assert f'detserve_request_latency_seconds_bucket{{service="{sid}",le="0.005"}} 1' in text
    assert f'detserve_request_latency_seconds_bucket{{service="{sid}",le="0.025"}} 3' in text
    assert f'detserve_request_latency_seconds_bucket{{service="{sid}",le="10"}} 5' in text
    assert f'detserve_inference_seconds_count{{service="{sid}"}} 4' in text
