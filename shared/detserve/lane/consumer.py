"""The worker's side of the sync lane: threads that take frames and answer them.

A synchronous prediction is only worth something to the caller waiting for it, so Celery's
per-task machinery (late acks, redelivery, a stored result) buys it nothing: each lane thread
BRPOPs the flavor's lanes, runs the frame's image through `handle` and sends the answer back: on
the frame's reply key, or to its port where the image came through a shared directory (shm.py).
A frame that waited past its caller's deadline is dropped unanswered.

Redis going away never stops the threads: each backs off (doubling, up to a cap) and tries again
for as long as it takes; redis-py's pool reconnects.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from detserve.errors import DetserveError
from detserve.lane import shm
from detserve.lane.frames import LANE_KEY, LOCAL_LANE_KEY, Frame, decode_frame, failure, success
from detserve.monitoring import logs

log = logging.getLogger("detserve.lane.consumer")

IDLE_POLL_SECONDS = 1.0  # how often an idle lane thread looks at its stop flag
BACKOFF_SECONDS = (0.1, 5.0)  # first and longest wait before trying Redis again
ANSWER_KEEP_SECONDS = 120  # an answer nobody collects (its caller gave up) vanishes
SWEEP_SECONDS = 60.0  # how often, and after how long, dead processes' ports are removed

Handler = Callable[[int, bytes, dict[str, Any]], dict[str, Any]]


class LaneConsumer:
    """`threads` threads answering a flavor's frames with `handle(version_id, image, options)`,
    which
    returns the contract's result or raises (a DetserveError reaches the caller as itself)."""

    def __init__(self, redis_url: str, flavor: str, handle: Handler, threads: int,
                 shm_dir: str = "") -> None:
        self.keys, self.handle = [LANE_KEY.format(flavor=flavor)], handle
        self.shared = shm.open_dir(shm_dir) if shm_dir else None
        if self.shared is not None:  # frames through our directory first
            self.keys.insert(0, LOCAL_LANE_KEY.format(flavor=flavor, shm_id=self.shared[1]))
        # the socket waits a little longer than the BRPOP it carries; a hung Redis is noticed
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=IDLE_POLL_SECONDS + 5,
                                          socket_connect_timeout=5)
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # sendto is thread-safe
        self._swept = time.monotonic()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"detserve-lane-{i}",
                                          daemon=True) for i in range(max(1, threads))]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        log.info("taking sync predictions from %s with %d threads", ", ".join(self.keys),
                 len(self._threads))

    def stop(self) -> None:
        """Take no more frames (frames being answered are finished)."""
        self._stop.set()

    def join(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` s for the threads to finish their frames, then let go of the
        sockets (a thread still busy past it loses its answer)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._sender.close()
        self.redis.close()

    def _run(self) -> None:
        backoff = BACKOFF_SECONDS[0]
        while not self._stop.is_set():
            try:
                item = self.redis.brpop(self.keys, timeout=IDLE_POLL_SECONDS)
                if item is not None:
                    self._answer(cast(bytes, item[1]))  # the client does not decode replies
                elif self.shared is not None and time.monotonic() - self._swept > SWEEP_SECONDS:
                    self._swept = time.monotonic()
                    shm.sweep(self.shared[0], SWEEP_SECONDS)
                backoff = BACKOFF_SECONDS[0]
            except redis.RedisError as exc:
                log.warning("sync lane: Redis unavailable (%s); trying again in %.1f s",
                            exc, backoff)
                self._stop.wait(backoff)
                backoff = min(2 * backoff, BACKOFF_SECONDS[1])

    def _answer(self, data: bytes) -> None:
        """Answer one frame (nothing when nobody waits for it any more)."""
        try:
            frame = decode_frame(data)
        except ValueError as exc:
            log.warning("sync lane: dropped a malformed frame (%s)", exc)
            return
        if time.time() > frame.deadline:  # its caller has been told the prediction timed out
            return
        # log lines written while answering concern the frame's service and request (logs.py)
        with logs.about(frame.service_id, frame.request_id or None):
            try:
                answer = success(self.handle(frame.version_id, self._image(frame),
                                             frame.options))
            except Exception as exc:
                answer = failure(exc)
                unexpected = not isinstance(exc, DetserveError) or exc.status_code >= 500
                log.log(logging.ERROR if unexpected else logging.INFO,
                        "prediction for service %s (request %s) failed: %s", frame.service_id,
                        frame.request_id or "-", exc, exc_info=unexpected)
        if frame.port:
            self._to_port(frame, answer)
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(frame.reply_to, answer)
        pipe.expire(frame.reply_to, ANSWER_KEEP_SECONDS)
        pipe.execute()

    def _image(self, frame: Frame) -> bytes:
        if not frame.port:
            return frame.image
        if self.shared is None:
            raise RuntimeError("a frame handed over in a shared directory this worker lacks")
        fd = os.open(shm.port_path(self.shared[0], frame.port, shm.SLOT), os.O_RDONLY)
        try:
            image = os.pread(fd, frame.image_size, 0)
        finally:
            os.close(fd)
        if len(image) != frame.image_size:
            raise RuntimeError(f"port {frame.port}'s slot holds less than the frame says")
        return image

    def _to_port(self, frame: Frame, answer: bytes) -> None:
        """Send the answer to the frame's port (into its slot when too big for a datagram)."""
        assert self.shared is not None
        slot = shm.port_path(self.shared[0], frame.port, shm.SLOT)
        try:
            if len(answer) > shm.DATAGRAM_BYTES:
                fd = os.open(slot, os.O_WRONLY)
                try:
                    shm.write_all(fd, answer)
                finally:
                    os.close(fd)
                answer = shm.IN_SLOT + str(len(answer)).encode()
            self._sender.sendto(frame.reply_to.encode() + b"\n" + answer,
                                str(slot.with_suffix(shm.SOCK)))
        except (OSError, ValueError) as exc:
            if getattr(exc, "errno", None) not in (errno.ENOENT, errno.ECONNREFUSED):
                log.warning("sync lane: could not answer port %s (%s)", frame.port, exc)
            # ENOENT, ECONNREFUSED: its caller has gone, nobody waits
