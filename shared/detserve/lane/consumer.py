"""The worker's side of the sync lane: threads that take frames and answer them.

A synchronous prediction is only worth something to the caller waiting for it, so Celery's
per-task machinery (late acks, redelivery, a stored result) buys it nothing: each lane thread
BRPOPs the flavor's lane, runs the frame's image through `handle` and RPUSHes the answer on the
frame's reply key. A frame that waited past its caller's deadline is dropped unanswered.

Redis going away never stops the threads: each backs off (doubling, up to a cap) and tries again
for as long as it takes; redis-py's pool reconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from detserve.lane.frames import LANE_KEY, decode_frame, failure, success

log = logging.getLogger("detserve.lane.consumer")

IDLE_POLL_SECONDS = 1.0  # how often an idle lane thread looks at its stop flag
BACKOFF_SECONDS = (0.1, 5.0)  # first and longest wait before trying Redis again
ANSWER_KEEP_SECONDS = 120  # an answer nobody collects (its caller gave up) vanishes

Handler = Callable[[int, bytes], dict[str, Any]]


class LaneConsumer:
    """`threads` threads answering a flavor's frames with `handle(version_id, image)`, which
    returns the contract's result or raises (a DetserveError reaches the caller as itself)."""

    def __init__(self, redis_url: str, flavor: str, handle: Handler, threads: int) -> None:
        self.key, self.handle = LANE_KEY.format(flavor=flavor), handle
        # the socket waits a little longer than the BRPOP it carries; a hung Redis is noticed
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=IDLE_POLL_SECONDS + 5,
                                          socket_connect_timeout=5)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"detserve-lane-{i}",
                                          daemon=True) for i in range(max(1, threads))]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        log.info("taking sync predictions from %s with %d threads", self.key, len(self._threads))

    def stop(self) -> None:
        """Take no more frames (frames being answered are finished)."""
        self._stop.set()

    def join(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` s for the threads to finish their frames."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        backoff = BACKOFF_SECONDS[0]
        while not self._stop.is_set():
            try:
                item = self.redis.brpop([self.key], timeout=IDLE_POLL_SECONDS)
                if item is not None:
                    self._answer(cast(bytes, item[1]))  # the client does not decode replies
                backoff = BACKOFF_SECONDS[0]
            except redis.RedisError as exc:
                log.warning("sync lane: Redis unavailable (%s); trying again in %.1f s",
                            exc, backoff)
                self._stop.wait(backoff)
                backoff = min(2 * backoff, BACKOFF_SECONDS[1])

    def _answer(self, data: bytes) -> None:
        """Answer one frame on its reply key (nothing when nobody waits for it any more)."""
        try:
            frame = decode_frame(data)
        except ValueError as exc:
            log.warning("sync lane: dropped a malformed frame (%s)", exc)
            return
        if time.time() > frame.deadline:  # its caller has been told the prediction timed out
            return
        try:
            answer = success(self.handle(frame.version_id, frame.image))
        except Exception as exc:
            answer = failure(exc)
            unexpected = getattr(exc, "status_code", 500) >= 500
            log.log(logging.ERROR if unexpected else logging.INFO,
                    "prediction for service %s (request %s) failed: %s", frame.service_id,
                    frame.request_id or "-", exc, exc_info=unexpected)
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(frame.reply_to, answer)
        pipe.expire(frame.reply_to, ANSWER_KEEP_SECONDS)
        pipe.execute()
