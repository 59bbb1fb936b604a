"""Uploaded images wait in Redis under a short-lived key while their task is queued
(the async prediction route stores them).

The task message then carries only the key: a 600 KB photo inside a Celery message is base64- and
JSON-encoded by kombu's Redis transport on both sides (about 15 ms on our machines), while raw
SET/GETDEL of the same bytes costs well under a millisecond each.
"""

from __future__ import annotations

from typing import cast

import redis

from detserve.errors import InvalidImage

KEEP_SECONDS = 900  # an image whose task is not taken by then is dropped


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
