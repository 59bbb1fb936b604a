"""Predictions: synchronous, asynchronous by task id, and the task's result."""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult
from flask import Response, after_this_request, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint

from detserve.errors import DetserveError
from detserve.lane import taskmessages
from detserve.processing import headers as images
from detserve_api import context
from detserve_api.auth import TASK_KEY
from detserve_api.resources.predictions import sync
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
    sync.check_running(service)
    data = image_upload(request)
    sync.check_image(data, context.settings())
    return data


@blp.route("/services/<string:service_id>/predict")
class Predict(MethodView):
    @blp.doc(requestBody=IMAGE_BODY)
    @blp.response(200, PredictionSchema)
    def post(self, service_id: str) -> Response:
        """Detect objects in one image and wait for the answer.

        Served by the fast path (detserve_api/fastpath.py) unless the request is unusual; both
        run the same steps (resources/predictions/sync.py).
        """
        timings = sync.Timings(g.request_started)
        image = _checked_image(g.service)

        @after_this_request
        def _count(response: Response) -> Response:
            response.headers["Server-Timing"] = timings.server_timing()
            context.monitor().record(service_id, timings.elapsed_ms(), response.status_code == 200,
                                     timings.inference_ms)
            return response

        body = sync.predict(context.lanes(), g.service, image, context.settings().predict_timeout,
                            timings)
        return current_app.response_class(body, mimetype="application/json")


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
