"""The steps of a prediction request that are not HTTP: the service's status, the image's check,
the round trip to a worker over the sync lane, and where the time went."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detserve.config import Settings
from detserve.errors import ServiceNotRunning
from detserve.lane.client import LaneClient
from detserve.processing.image import inspect
from detserve.processing.options import parse
from detserve.service.status import RUNNING
from detserve.store import ModelVersion, Store


def check_running(service: Any) -> None:
    if service.status != RUNNING:
        raise ServiceNotRunning(f"service {service.id} is {service.status}; start it and wait "
                                "for Running before predicting")


def answer_options(values: Mapping[str, str], service: Any, store: Store) -> dict[str, Any]:
    """The request's answer options, checked (class names against the version's labels, read
    only when the request names classes), as the worker takes them.

    Raises:
        ValidationFailed: a bad value, naming the field and what it accepts.
    """
    options = parse(values)
    if options.classes is not None or options.class_thresholds:
        with store.session(readonly=True) as session:
            version = session.get(ModelVersion, service.version_id)
        options.check_labels(list(version.labels) if version is not None else [])
    return options.to_dict()


def check_image(image: bytes, settings: Settings) -> None:
    """The format and limits, from the header alone: bad input never reaches a queue."""
    inspect(image, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)


@dataclass
class Timings:
    """Where a prediction's time went (perf_counter seconds), for Server-Timing and monitoring."""

    request: float  # the request reached the app
    started: float = field(default_factory=time.perf_counter)  # the caller is known
    sent: float = 0.0  # checked and queued
    done: float = 0.0  # the worker's answer arrived
    inference_ms: float | None = None

    def server_timing(self) -> str:
        """The Server-Timing header: browsers' developer tools show where the time went."""
        return ", ".join(f"{name};dur={value:.2f}" for name, value in (
            ("auth", (self.started - self.request) * 1000),
            ("enqueue", (self.sent - self.started) * 1000 if self.sent else 0.0),
            ("worker", (self.done - self.sent) * 1000 if self.done else 0.0),
            ("model", self.inference_ms or 0.0)))

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


def predict(lane: LaneClient, service: Any, image: bytes, timings: Timings,
            request_id: str = "", options: dict[str, Any] | None = None) -> bytes:
    """The result's JSON from a worker of the service's flavor, over the sync lane (not a Celery
    task: nothing but this caller wants the answer).

    Raises:
        PredictionTimeout: no answer within the timeout (504).
        Unavailable: the lane's Redis cannot be reached (503).
        RemoteError: the worker's error, with its code and status.
    """
    timings.sent = time.perf_counter()
    try:
        answer = lane.call(service.flavor, service.version_id, service.id, image, request_id,
                           options)
    finally:
        timings.done = time.perf_counter()
    timings.inference_ms = answer.inference_ms
    return answer.body  # already in the documented shape: passed on as the worker wrote it
