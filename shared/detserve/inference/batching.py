"""A small worker-side dynamic batcher: items that arrive within a short window run as one batch.

Why not celery-batches: it buffers messages in the consumer and acks them as a group, which does
not fit our late-ack, per-task results, and it cannot group by the service an image belongs to.
Here every Celery worker thread decodes and pre-processes its own image in parallel, then hands
the tensor to the batcher of that model and waits; one thread runs the batch on the device and
gives each task its own slice back. A batch that fails fails only its own tasks.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from detserve.errors import Unavailable

In = TypeVar("In")
Out = TypeVar("Out")


class BatcherClosed(Unavailable):
    """The batcher was closed (its model unloaded) before this item ran: a 503, retry."""


class Batcher(Generic[In, Out]):
    """Collect items for up to `window` seconds (or `max_batch` items) and run them together."""

    def __init__(self, run: Callable[[Sequence[In]], Sequence[Out]], *, max_batch: int,
                 window: float, name: str = "detserve-batcher") -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.run, self.max_batch, self.window = run, max_batch, window
        self._queue: queue.SimpleQueue[tuple[In, Future[Out]] | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # orders submits against close's stop marker
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self.batches: list[int] = []  # sizes of the batches run, newest last (bounded)

    def submit(self, item: In) -> Future[Out]:
        """A future for the item's result; failed at once if the batcher is closed."""
        future: Future[Out] = Future()
        with self._lock:
            if not self._closed:
                self._queue.put((item, future))
                return future
        future.set_exception(BatcherClosed("the model was unloaded; send the request again"))
        return future

    def __call__(self, item: In, timeout: float) -> Out:
        """The item's result, waiting at most `timeout` s (a waiter always has a bound)."""
        return self.submit(item).result(timeout)

    def close(self) -> None:
        """Run what was submitted, then stop; later submits fail instead of waiting forever."""
        with self._lock:
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout=5)
        self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        while True:
            try:
                left = self._queue.get_nowait()
            except queue.Empty:
                return
            if left is not None and not left[1].done():
                left[1].set_exception(BatcherClosed("the model was unloaded; send the request again"))

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._fail_leftovers()
                return
            batch = [first]
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._run(batch)

    def _run(self, batch: list[tuple[In, Future[Out]]]) -> None:
        self.batches = (self.batches + [len(batch)])[-1000:]
        try:
            results = self.run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
        except BaseException as exc:  # the batch's own tasks get the error, nobody else
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)
