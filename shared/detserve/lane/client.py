"""The API's side of the sync lane: push a frame, wait for its answer, never longer than asked.

One pipeline carries the LPUSH of the frame, the EXPIRE of the lane (a lane no worker takes from
does not keep its frames forever) and the BLPOP on the call's own reply key: Redis runs them in
order, so the frame is queued before the wait starts, in one round trip.

Every call is bounded: the socket timeout is the prediction timeout plus a margin, so a Redis
that hangs (stopped, partitioned) ends the call as a 504 all the same. A connection Redis closed
(a restart) is replaced by redis-py's pool before use, and a command that meets a dead connection
is sent once more on a new one; a timeout is never retried, as the time is the caller's.
"""

from __future__ import annotations

import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from detserve.errors import PredictionTimeout, Unavailable
from detserve.lane.frames import (
    LANE_KEY,
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


class LaneClient:
    """Thread-safe: one per API process, shared by its threads (redis-py's pool)."""

    def __init__(self, redis_url: str, timeout: float) -> None:
        self.timeout = timeout
        self.redis = redis.Redis.from_url(
            redis_url, socket_timeout=timeout + MARGIN_SECONDS,
            socket_connect_timeout=CONNECT_SECONDS,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))

    def call(self, flavor: str, version_id: int, service_id: str, image: bytes,
             request_id: str = "") -> Answer:
        """The worker's answer for the image (status 200).

        Raises:
            PredictionTimeout: no answer within the timeout, or Redis did not answer (504).
            Unavailable: Redis cannot be reached (503).
            RemoteError: the worker's error, with its code and status.
        """
        reply_to = new_reply_key()
        frame = Frame(version_id, service_id, reply_to, time.time() + self.timeout, image,
                      request_id)
        lane = LANE_KEY.format(flavor=flavor)
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(lane, encode_frame(frame))
        pipe.expire(lane, int(self.timeout) + LANE_KEEP_SECONDS)
        pipe.blpop([reply_to], timeout=self.timeout)
        try:
            item = pipe.execute()[-1]
        except redis.TimeoutError as exc:
            raise PredictionTimeout(f"the broker (Redis) did not answer within "
                                    f"{self.timeout:g} s; try again later") from exc
        except redis.RedisError as exc:
            raise Unavailable("the broker (Redis) cannot be reached; try again later") from exc
        if item is None:
            raise PredictionTimeout(f"no answer from a {flavor} worker within "
                                    f"{self.timeout:g} s")
        try:
            answer = decode_answer(item[1])
        except ValueError as exc:
            raise Unavailable("a worker sent an answer that could not be read") from exc
        if answer.error is not None:
            raise RemoteError(answer.error["code"], answer.error["message"], answer.status)
        return answer

    def close(self) -> None:
        self.redis.close()
