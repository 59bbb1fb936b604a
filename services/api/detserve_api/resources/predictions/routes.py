"""Predictions: synchronous, asynchronous by task id, and the task's result."""

from __future__ import annotations

import time
from typing import Any

from celery.result import AsyncResult
from flask import Response, after_this_request, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint

from detserve import images, replies, taskmessages
from detserve.errors import DetserveError, PredictionTimeout, ServiceNotRunning
from detserve.processing.image import inspect
from detserve.status import RUNNING
from detserve_api import context
from detserve_api.auth import TASK_KEY
from detserve_api.resources.predictions.schemas import (
    PredictionSchema,
    TaskCreatedSchema,
    TaskSchema,
)
from detserve_api.uploads import image_upload

blp = Blueprint("predictions", __name__, url_prefix="/v1", description="Predictions")
IMAGE_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["images"],
    "properties": {"images": {"type": "string", "format": "binary",
                              "description": "one JPG, JPEG, BMP or PNG image"}}}}}}


def _checked_image(service: Any) -> bytes:
    """The upload, once the service is Running and the image's header is acceptable."""
    if service.status != RUNNING:
        raise ServiceNotRunning(f"service {service.id} is {service.status}; start it and wait "
                                "for Running before predicting")
    data = image_upload(request)
    settings = context.settings()
    inspect(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    return data


@blp.route("/services/<string:service_id>/predict")
class Predict(MethodView):
    @blp.doc(requestBody=IMAGE_BODY)
    @blp.response(200, PredictionSchema)
    def post(self, service_id: str) -> Response:
        """Detect objects in one image and wait for the answer."""
        started = time.perf_counter()
        timeout = context.settings().predict_timeout
        service = g.service
        image = _checked_image(service)
        sent = time.perf_counter()
        outcome: dict[str, Any] = {"ok": False, "inference_ms": None, "done": 0.0}

        @after_this_request
        def _count(response: Response) -> Response:
            elapsed = (time.perf_counter() - started) * 1000
            done = outcome["done"]
            # Server-Timing: where the time went (browsers' developer tools show it)
            response.headers["Server-Timing"] = ", ".join(
                f"{name};dur={value:.2f}" for name, value in (
                    ("auth", (started - g.request_started) * 1000), ("enqueue", (sent - started) * 1000),
                    ("worker", (done - sent) * 1000 if done else 0.0),
                    ("model", outcome["inference_ms"] or 0.0)))
            context.monitor().record(service_id, elapsed, outcome["ok"], outcome["inference_ms"])
            return response

        # the flavor's sync lane, not a Celery task: nothing but this caller wants the answer
        answer = context.lanes().call(service.flavor, service.version_id, service.id, image,
                                      timeout)
        outcome["done"] = time.perf_counter()
        if answer is None:
            raise PredictionTimeout(f"no answer from a {service.flavor} worker within {timeout:g} s")
        if answer.error is not None:
            raise replies.RemoteError(answer.error["code"], answer.error["message"], answer.status)
        outcome.update(ok=True, inference_ms=answer.inference_ms)
        # the worker wrote the result in the documented shape: pass its bytes on as they came
        return current_app.response_class(answer.body, mimetype="application/json")


@blp.route("/services/<string:service_id>/predictions")
class Submit(MethodView):
    @blp.doc(requestBody=IMAGE_BODY)
    @blp.response(202, TaskCreatedSchema)
    def post(self, service_id: str) -> dict[str, str]:
        """Queue a prediction and answer at once with its task id."""
        task_id = taskmessages.publish_prediction(
            context.redis_client(), g.service.flavor, g.service.version_id,
            _checked_image(g.service), images.KEEP_SECONDS)
        context.redis_client().set(TASK_KEY.format(task_id=task_id), service_id,
                                   ex=context.settings().result_ttl)
        return {"task_id": task_id}


@blp.route("/predictions/<string:task_id>")
class Task(MethodView):
    @blp.response(200, TaskSchema)
    def get(self, task_id: str) -> dict[str, Any]:
        """The status and result of an asynchronous prediction."""
        result = AsyncResult(task_id, app=context.celery())
        state = result.state
        body: dict[str, Any] = {"task_id": task_id, "status": state, "result": None, "error": None}
        if state == "SUCCESS":
            body["result"] = result.result
        elif state == "FAILURE":
            exc = result.result
            body["error"] = exc.message if isinstance(exc, DetserveError) else str(exc)
        elif state not in ("PENDING", "STARTED"):
            body["status"] = "PENDING"  # RECEIVED/RETRY look the same to a caller
        return body
