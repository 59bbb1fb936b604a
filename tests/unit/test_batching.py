"""The dynamic batcher, with real threads and real timing."""

from __future__ import annotations

import threading
import time

import pytest

from detserve.inference.batching import Batcher


def doubling(items):
    if "bad" in items:
        raise ValueError("a bad item")
    return [x * 2 for x in items]


def test_items_within_the_window_share_a_batch():
    b = Batcher(doubling, max_batch=8, window=0.2)
    futures = [b.submit(i) for i in range(5)]
    assert [f.result(2) for f in futures] == [0, 2, 4, 6, 8]
    assert b.batches == [5]
    b.close()


def test_max_batch_is_respected():
    b = Batcher(doubling, max_batch=4, window=0.2)
    futures = [b.submit(i) for i in range(10)]
    assert [f.result(3) for f in futures] == [i * 2 for i in range(10)]
    assert b.batches == [4, 4, 2]
    b.close()


def test_items_after_the_window_go_to_the_next_batch():
    b = Batcher(doubling, max_batch=8, window=0.05)
    first = b.submit(1)
    first.result(2)
    time.sleep(0.1)
    assert b(2, timeout=2) == 4
    assert b.batches == [1, 1]
    b.close()


def test_a_failed_batch_fails_only_its_own_tasks():
    gate = threading.Event()

    def slow(items):
        gate.wait(2)
        return doubling(items)

    b = Batcher(slow, max_batch=8, window=0.05)
    doomed = [b.submit("bad"), b.submit(3)]
    time.sleep(0.1)  # the first batch has closed; these form the next one
    fine = [b.submit(4), b.submit(5)]
    gate.set()
    for f in doomed:
        with pytest.raises(ValueError, match="a bad item"):
            f.result(2)
    assert [f.result(2) for f in fine] == [8, 10]
    assert b.batches == [2, 2]
    b.close()


def test_concurrent_submitters_from_many_threads():
    b = Batcher(doubling, max_batch=16, window=0.05)
    results = {}

    def submit(i):
        results[i] = b(i, timeout=5)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: i * 2 for i in range(40)}
    assert max(b.batches) <= 16 and sum(b.batches) == 40
    b.close()
