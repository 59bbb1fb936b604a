"""The dynamic batcher, with real threads. Batches are shaped by max_batch, by close() and by a
run that is still busy, never by how fast this machine submits: a loaded 2-core machine can pause
a thread for longer than any window a test could afford to wait."""

from __future__ import annotations

import threading

import pytest

from detserve.inference.batching import Batcher

LONG = 30.0  # a window no test waits out: batches close on max_batch or close()


def doubling(items):
    if "bad" in items:
        raise ValueError("a bad item")
    return [x * 2 for x in items]


def test_items_within_the_window_share_a_batch():
    b = Batcher(doubling, max_batch=5, window=LONG)
    futures = [b.submit(i) for i in range(5)]
    assert [f.result(10) for f in futures] == [0, 2, 4, 6, 8]
    assert b.batches == [5]
    b.close()


def test_max_batch_is_respected_and_close_runs_what_is_left():
    b = Batcher(doubling, max_batch=4, window=LONG)
    futures = [b.submit(i) for i in range(10)]
    b.close()  # the last two do not wait out the window
    assert [f.result(10) for f in futures] == [i * 2 for i in range(10)]
    assert b.batches == [4, 4, 2]


def test_items_after_the_window_go_to_the_next_batch():
    b = Batcher(doubling, max_batch=8, window=0.05)
    assert b(1, timeout=10) == 2  # its batch has run: the window closed
    assert b(2, timeout=10) == 4
    assert b.batches == [1, 1]
    b.close()


def test_items_that_arrive_while_a_batch_runs_form_the_next_one():
    gate, running = threading.Event(), threading.Event()

    def slow(items):
        running.set()
        assert gate.wait(10)
        return doubling(items)

    b = Batcher(slow, max_batch=3, window=LONG)
    first = [b.submit(i) for i in range(3)]
    assert running.wait(10)
    queued = [b.submit(i) for i in range(3, 6)]
    gate.set()
    assert [f.result(10) for f in first + queued] == [0, 2, 4, 6, 8, 10]
    assert b.batches == [3, 3]
    b.close()


def test_a_failed_batch_fails_only_its_own_tasks():
    gate, running = threading.Event(), threading.Event()

    def slow(items):
        running.set()
        assert gate.wait(10)
        return doubling(items)

    b = Batcher(slow, max_batch=2, window=LONG)
    doomed = [b.submit("bad"), b.submit(3)]
    assert running.wait(10)  # the first batch is running; these two form the next one
    fine = [b.submit(4), b.submit(5)]
    gate.set()
    for f in doomed:
        with pytest.raises(ValueError, match="a bad item"):
            f.result(10)
    assert [f.result(10) for f in fine] == [8, 10]
    assert b.batches == [2, 2]
    b.close()


def test_a_run_that_answers_the_wrong_count_fails_its_batch():
    b = Batcher(lambda items: items[:1], max_batch=2, window=LONG)
    futures = [b.submit(1), b.submit(2)]
    for f in futures:
        with pytest.raises(RuntimeError, match="batch of 2 gave 1 results"):
            f.result(10)
    b.close()


def test_concurrent_submitters_from_many_threads():
    b = Batcher(doubling, max_batch=16, window=0.05)
    results = {}

    def submit(i):
        results[i] = b(i, timeout=30)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: i * 2 for i in range(40)}
    assert max(b.batches) <= 16 and sum(b.batches) == 40
    b.close()


def test_max_batch_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(doubling, max_batch=0, window=0.1)
