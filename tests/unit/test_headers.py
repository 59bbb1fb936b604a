"""An image waiting in Redis for its task is read once, and an expired one is reported."""

from __future__ import annotations

import redis

from conftest import claim_redis_db
from detserve.errors import InvalidImage
from detserve.processing.headers import KEEP_SECONDS, take


def test_an_image_is_taken_once_and_a_missing_one_says_send_it_again(redis_base):
    client = redis.Redis.from_url(f"{redis_base}/{claim_redis_db(redis_base)}")
    client.set("detserve:test:image", b"\xff\xd8\xff bytes", ex=KEEP_SECONDS)
    assert take(client, "detserve:test:image") == b"\xff\xd8\xff bytes"
    assert client.exists("detserve:test:image") == 0
    try:
        take(client, "detserve:test:image")
    except InvalidImage as exc:
        assert f"over {KEEP_SECONDS} s" in exc.message and "send it again" in exc.message
    else:
        raise AssertionError("a second take found the image")
