"""An image waiting in Redis for its task stays there until its task ends (a task redelivered
after its worker died still finds it), and an expired one is reported."""

from __future__ import annotations

import pytest
import redis

from conftest import claim_redis_db
from detserve.processing.headers import KEEP_SECONDS, ImageGone, read


def test_an_image_is_read_and_kept_and_a_missing_one_says_send_it_again(redis_base):
    client = redis.Redis.from_url(f"{redis_base}/{claim_redis_db(redis_base)}")
    client.set("detserve:test:image", b"\xff\xd8\xff bytes", ex=KEEP_SECONDS)
    assert read(client, "detserve:test:image") == b"\xff\xd8\xff bytes"
    assert read(client, "detserve:test:image") == b"\xff\xd8\xff bytes"  # a redelivery's read
    client.delete("detserve:test:image")  # the task ended
    with pytest.raises(ImageGone) as gone:
        read(client, "detserve:test:image")
    assert f"over {KEEP_SECONDS} s" in gone.value.message and "send it again" in gone.value.message
