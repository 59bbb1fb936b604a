"""A service's traffic limit, shared by every API process through Redis.

The limiter is GCRA (the generic cell rate algorithm, as in ATM networks and redis-cell): one
key per service holds the "theoretical arrival time" of the next request; a request passes when
that time is less than a burst window ahead of now. One Lua script reads and moves it atomically,
in one round trip, with Redis's own clock (so API hosts' clocks never disagree about a window).
Fractional rates work (0.5 qps: one request every 2 s), and a refusal knows exactly when the
next request would pass (Retry-After).

The burst window is max(1 s, one request's interval): a caller may send a second's worth of
requests at once, and never more than `qps` per second on average.
"""

from __future__ import annotations

import math

import redis

from detserve.errors import RateLimited, Unavailable

KEY = "detserve:ratelimit:{service_id}"

# KEYS[1]: the service's TAT key. ARGV[1]: the interval between requests, ARGV[2]: the burst
# window, both in microseconds. Returns 0 (passed) or the microseconds until one would pass.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - window
if now < allow_at then
  return allow_at - now
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX',
           math.ceil((new_tat - now) / 1000) + 1)
return 0
"""


class Limiter:
    """Thread-safe (redis-py's pool); one per API process."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(GCRA)

    def check(self, service_id: str, qps: float | None) -> None:
        """Count one request of the service against its limit (None: no limit).

        Raises:
            RateLimited: over the limit (429, with Retry-After in whole seconds).
            Unavailable: Redis cannot be reached (503).
        """
        if qps is None:
            return
        interval = 1_000_000 / qps
        window = max(1_000_000.0, interval)
        try:
            wait = int(self._script(keys=[KEY.format(service_id=service_id)],
                                    args=[int(interval), int(window)]))
        except redis.RedisError as exc:
            raise Unavailable("the traffic limiter (Redis) cannot be reached; try again "
                              "later") from exc
        if wait > 0:
            raise RateLimited(f"this service is limited to {qps:g} predictions per second; "
                              f"try again in {wait / 1e6:.2f} s",
                              retry_after=max(1, math.ceil(wait / 1e6)))
