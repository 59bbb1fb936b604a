"""The API's side of the sync lane: push a frame, wait for its answer, never longer than asked.

Across hosts, one pipeline carries the LPUSH of the frame (the image inline), the EXPIRE of the
lane (a lane no worker takes from does not keep its frames forever) and the BLPOP on the call's
own reply key: Redis runs them in order, so the frame is queued before the wait starts, in one
round trip. On one host (a shared directory, shm.py) the image waits in the thread's slot and
the answer comes back on its socket; the frame still goes through Redis.

Every call is bounded: the socket timeout is the prediction timeout plus a margin, so a Redis
that hangs (stopped, partitioned) ends the call as a 504 all the same. A connection Redis closed
(a restart) is replaced by redis-py's pool before use, and a command that meets a dead connection
is sent once more on a new one; a timeout is never retried, as the time is the caller's.
"""

from __future__ import annotations

import atexit
import dataclasses
import fcntl
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from detserve.errors import PredictionTimeout, Unavailable
from detserve.lane import shm
from detserve.lane.frames import (
    LANE_KEY,
    LOCAL_LANE_KEY,
    Answer,
    Frame,
    RemoteError,
    decode_answer,
    encode_frame,
    new_reply_key,
)

MARGIN_SECONDS = 1.0  # the socket waits this much longer than the BLPOP it carries
CONNECT_SECONDS = 2.0
LANE_KEEP_SECONDS = 60  # a lane no worker takes from vanishes this long after its last call
# a slot is rewritten in place (new pages per image cost more than the write); one grown past
# this by a huge image is emptied before the next
KEEP_BYTES = 4 * 1024 * 1024


class LaneClient:
    """Thread-safe: one per API process, shared by its threads (redis-py's pool; a port each)."""

    def __init__(self, redis_url: str, timeout: float, shm_dir: str = "") -> None:
        self.timeout = timeout
        self.redis = redis.Redis.from_url(
            redis_url, socket_timeout=timeout + MARGIN_SECONDS,
            socket_connect_timeout=CONNECT_SECONDS,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
        self.shared = shm.open_dir(shm_dir) if shm_dir else None
        self._local = threading.local()
        self._ports: list[Port] = []
        self._lock = threading.Lock()

    def call(self, flavor: str, version_id: int, service_id: str, image: bytes,
             request_id: str = "", options: dict[str, Any] | None = None) -> Answer:
        """The worker's answer for the image (status 200).

        Raises:
            PredictionTimeout: no answer within the timeout, or Redis did not answer (504).
            Unavailable: Redis cannot be reached (503).
            RemoteError: the worker's error, with its code and status.
        """
        frame = Frame(version_id, service_id, new_reply_key(), time.time() + self.timeout,
                      image, request_id, options=options or {})
        if self.shared is None:
            data = self._send(LANE_KEY.format(flavor=flavor), frame, wait=True)
        else:
            try:
                port = self._port()
                frame = port.hold(frame)
            except OSError as exc:  # full, or a path too long for a socket's name
                raise Unavailable(f"the shared directory {self.shared[0]} cannot take the image "
                                  f"({exc}); tell the operator") from exc
            self._send(LOCAL_LANE_KEY.format(flavor=flavor, shm_id=port.shm_id), frame, wait=False)
            data = port.receive(frame.reply_to, self.timeout)
        if data is None:
            raise PredictionTimeout(f"no answer from a {flavor} worker within "
                                    f"{self.timeout:g} s")
        try:
            answer = decode_answer(data)
        except ValueError as exc:
            raise Unavailable("a worker sent an answer that could not be read") from exc
        if answer.error is not None:
            raise RemoteError(answer.error["code"], answer.error["message"], answer.status)
        return answer

    def _send(self, lane: str, frame: Frame, wait: bool) -> bytes | None:
        """Queue the frame; with `wait`, also BLPOP its reply key (None after the timeout)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(lane, encode_frame(frame))
        pipe.expire(lane, int(self.timeout) + LANE_KEEP_SECONDS)
        if wait:
            pipe.blpop([frame.reply_to], timeout=self.timeout)
        try:
            item = pipe.execute()[-1]
        except redis.TimeoutError as exc:
            raise PredictionTimeout(f"the broker (Redis) did not answer within "
                                    f"{self.timeout:g} s; try again later") from exc
        except redis.RedisError as exc:
            raise Unavailable("the broker (Redis) cannot be reached; try again later") from exc
        return item[1] if wait and item is not None else None  # type: ignore[no-any-return]

    def _port(self) -> Port:
        """This thread's port in the shared directory."""
        assert self.shared is not None
        port: Port | None = getattr(self._local, "port", None)
        if port is None:
            port = self._local.port = Port(*self.shared)
            with self._lock:
                if not self._ports:
                    atexit.register(self.close)
                self._ports.append(port)
        return port

    def close(self) -> None:
        """Remove this process's ports; close its connections."""
        with self._lock:
            ports, self._ports = self._ports, []
        for port in ports:
            port.close()
        self.redis.close()


class Port:
    """A thread's slot and answer socket in the shared directory. One per thread."""

    def __init__(self, directory: Path, shm_id: str) -> None:
        self.shm_id, self.name = shm_id, secrets.token_hex(8)
        self.slot = shm.port_path(directory, self.name, shm.SLOT)
        self._fd = os.open(self.slot, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while we live (shm.sweep)
            self._sock.bind(str(self.slot.with_suffix(shm.SOCK)))
        except OSError:
            self.close()
            raise
        self._buf = bytearray(shm.DATAGRAM_BYTES + 4096)
        self._size = 0

    def hold(self, frame: Frame) -> Frame:
        """The frame to queue: its image written into the slot, its name in the frame's place."""
        if self._size > KEEP_BYTES:
            os.ftruncate(self._fd, 0)  # a huge image does not keep its memory
        shm.write_all(self._fd, frame.image)
        self._size = len(frame.image)
        return dataclasses.replace(frame, image=b"", port=self.name, image_size=len(frame.image))

    def receive(self, answer_id: str, timeout: float) -> bytes | None:
        """The answer for `answer_id`, or None after `timeout` s; late answers to earlier calls
        are thrown away."""
        wanted, deadline = answer_id.encode(), time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            try:
                n = self._sock.recv_into(self._buf)
            except TimeoutError:
                return None
            got, _, payload = bytes(memoryview(self._buf)[:n]).partition(b"\n")
            if got == wanted:
                if payload.startswith(shm.IN_SLOT):
                    return os.pread(self._fd, int(payload[len(shm.IN_SLOT):]), 0)
                return payload
        return None

    def close(self) -> None:
        for path in (self.slot.with_suffix(shm.SOCK), self.slot):
            path.unlink(missing_ok=True)
        self._sock.close()
        os.close(self._fd)
