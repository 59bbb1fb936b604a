"""Back-off for background loops that must outlive any Redis outage (listeners, heartbeats)."""

from __future__ import annotations

import random
import threading


class Backoff:
    """Waits that grow from `first` to `cap` seconds (with jitter, so that the workers of a fleet
    do not all reconnect in the same instant) and start over once a connection works again."""

    def __init__(self, first: float = 0.2, cap: float = 10.0) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the next back-off (or until `stop` is set); True if `stop` was set."""
        delay = self._next * random.uniform(0.5, 1.0)
        self._next = min(self.cap, self._next * 2)
        return stop.wait(delay)
