"""What the traffic limiter costs a request under its limit: the limiter's call against a real
Redis, timed in a loop, beside a plain PING on the same connection (the round trip's floor).

    python bench/ratelimit.py [--redis redis://127.0.0.1:6379/0] [--calls 5000]

Calls alternate limiter / PING so that the host's drift lands on both; figures are medians and
p99 in microseconds. The limit is set far above the loop's rate, so every call passes.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import redis

from detserve.service.ratelimit import KEY, Limiter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis)
    limiter, service = Limiter(client), f"bench-{uuid.uuid4().hex[:8]}"
    limited, ping = [], []
    for _ in range(200):  # warm: the script is loaded, the connection open
        limiter.check(service, 1e6)
        client.ping()
    for _ in range(args.calls):
        t0 = time.perf_counter()
        limiter.check(service, 1e6)
        t1 = time.perf_counter()
        client.ping()
        t2 = time.perf_counter()
        limited.append((t1 - t0) * 1e6)
        ping.append((t2 - t1) * 1e6)
    client.delete(KEY.format(service_id=service))
    for name, values in (("limiter.check", limited), ("PING", ping)):
        values.sort()
        print(f"{name:14} median {statistics.median(values):7.1f} us   "
              f"p99 {values[int(len(values) * 0.99)]:7.1f} us   ({len(values)} calls)")
    print(f"limiter over PING: median +{statistics.median(limited) - statistics.median(ping):.1f} us")


if __name__ == "__main__":
    main()
