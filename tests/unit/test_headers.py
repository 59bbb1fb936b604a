"""An image waiting in Redis for its task stays there until its task ends (a task redelivered
after its worker died still finds it), and an expired one is reported."""

from __future__ import annotations

import time

import pytest
import redis

from conftest import scratch_redis_url
from detserve.processing.headers import (
    INDEX,
    KEEP_SECONDS,
    ImageGone,
    drop,
    keep,
    read,
    waiting_for,
)


def test_an_image_is_read_and_kept_and_a_missing_one_says_send_it_again(redis_base):
    client = redis.Redis.from_url(scratch_redis_url(redis_base))
    client.set("detserve:test:image", b"\xff\xd8\xff bytes", ex=KEEP_SECONDS)
    assert read(client, "detserve:test:image") == b"\xff\xd8\xff bytes"
    assert read(client, "detserve:test:image") == b"\xff\xd8\xff bytes"  # a redelivery's read
    client.delete("detserve:test:image")  # the task ended
    with pytest.raises(ImageGone) as gone:
        read(client, "detserve:test:image")
    assert f"over {KEEP_SECONDS} s" in gone.value.message and "send it again" in gone.value.message


def test_kept_images_are_indexed_by_age_until_their_task_ends_or_they_expire(redis_base):
    client = redis.Redis.from_url(scratch_redis_url(redis_base))
    client.delete(INDEX)
    now = time.time()
    keep(client, "detserve:test:old", b"a", now=now - 60)
    keep(client, "detserve:test:new", b"b", now=now)
    keep(client, "detserve:test:expired", b"c", now=now - KEEP_SECONDS - 5)
    assert client.ttl("detserve:test:new") > KEEP_SECONDS - 5
    # the old ones only, oldest first; the one past KEEP_SECONDS (its image gone) leaves the index
    assert waiting_for(client, 30, now) == ["detserve:test:old"]
    assert client.zscore(INDEX, "detserve:test:expired") is None
    drop(client, "detserve:test:old")  # its task ended
    assert not client.exists("detserve:test:old") and waiting_for(client, 0, now + 1) == [
        "detserve:test:new"]
    drop(client, "detserve:test:new")
    client.delete("detserve:test:expired")
