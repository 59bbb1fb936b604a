"""Uploaded images wait in Redis under a short-lived key while their task is queued
(the async prediction route stores them).

The task message then carries only the key: kombu's Redis transport base64- and JSON-encodes a
message body on both sides, work that grows with the photo, while a raw SET/GETDEL moves the same
bytes as they are.
"""

from __future__ import annotations

import time
from typing import Any, cast

import redis

from detserve.errors import InvalidImage

KEEP_SECONDS = 900  # an image whose task is not taken by then is dropped
# The keys of the images waiting, scored by when they were kept (seconds since the epoch): the
# scheduler's sweep reads the old ones from here instead of SCANning the whole keyspace each run.
INDEX = "detserve:images"


class ImageGone(InvalidImage):
    """The image's key is gone: it expired before a worker took the task."""


def read(client: redis.Redis, key: str) -> bytes:
    """The image's bytes. They stay in Redis until the task ends (its worker deletes them), so a
    task redelivered after its worker died still finds them.

    Raises:
        ImageGone: the image expired before a worker took the task.
    """
    data = client.get(key)
    if data is None:
        raise ImageGone(f"the image waited over {KEEP_SECONDS} s for a worker and was dropped; "
                        "send it again")
    return cast(bytes, data)  # the client is not decoding responses


def keep(pipe: Any, key: str, data: bytes, now: float | None = None) -> None:
    """Queue on `pipe` (a redis pipeline or client) the commands that keep an image under `key`
    until its task ends (or KEEP_SECONDS pass) and list it in INDEX.

    The index entry goes first: should Redis stop between the two, an entry without its image is
    pruned by the sweep, while an image without its entry would never be found lost.
    """
    pipe.zadd(INDEX, {key: time.time() if now is None else now})
    pipe.set(key, data, ex=KEEP_SECONDS)


def drop(client: redis.Redis, key: str) -> None:
    """The task ended: its image and its index entry go."""
    pipe = client.pipeline(transaction=False)
    pipe.delete(key)
    pipe.zrem(INDEX, key)
    pipe.execute()


def waiting_for(client: redis.Redis, seconds: float, now: float | None = None) -> list[str]:
    """The keys of images kept at least `seconds` ago whose task has not ended, oldest first;
    entries of images past KEEP_SECONDS (expired: their tasks were never taken) leave the index."""
    now = time.time() if now is None else now
    client.zremrangebyscore(INDEX, "-inf", f"({now - KEEP_SECONDS}")
    raw = client.zrangebyscore(INDEX, "-inf", now - seconds)
    return [k.decode() if isinstance(k, bytes) else str(k) for k in raw]


def forget(client: redis.Redis, key: str) -> None:
    """Drop an index entry whose image is gone (expired, or its task ended on an older worker
    that deletes only the image)."""
    client.zrem(INDEX, key)
