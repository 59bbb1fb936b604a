"""The logs route's one rule beyond reading: what `since` may be."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import redis

from detserve.errors import ValidationFailed
from detserve.monitoring import logs

WINDOWS = {"5m": 300, "30m": 1800, "60m": 3600}


def parse_since(value: str, now: float | None = None) -> float:
    """Epoch seconds from 5m / 30m / 60m or an ISO-8601 time.

    Raises:
        ValidationFailed: anything else, naming the field and what it accepts.
    """
    now = time.time() if now is None else now
    if value in WINDOWS:
        return now - WINDOWS[value]
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        problem = f"{value!r} is neither 5m, 30m, 60m nor an ISO-8601 time such as " \
                  "2026-12-04T18:30:00Z"
        raise ValidationFailed(f"invalid since ({problem})", fields={"since": [problem]}) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def log_lines(client: redis.Redis, service_id: str, since: str, limit: int) -> dict[str, Any]:
    start = parse_since(since)
    return {"since": datetime.fromtimestamp(start, UTC).isoformat().replace("+00:00", "Z"),
            "lines": logs.read(client, service_id, start, limit)}
