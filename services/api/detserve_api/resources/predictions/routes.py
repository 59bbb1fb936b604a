"""Predictions: synchronous, asynchronous by task id, and the task's result."""

from __future__ import annotations

import time
from typing import Any

from celery.result import AsyncResult
from detserve import monitoring, replies
from detserve import tasknames as names
from detserve.errors import DetserveError, PredictionTimeout, ServiceNotRunning
from detserve.processing.image import inspect
from detserve.status import RUNNING
from detserve.store import Service
from flask import g
from flask.views import MethodView
from flask_smorest import Blueprint

from detserve_api import context
from detserve_api.auth import TASK_KEY
from detserve_api.resources.predictions.schemas import (
    ImageFilesSchema,
    PredictionSchema,
    TaskCreatedSchema,
    TaskSchema,
)

blp = Blueprint("predictions", __name__, url_prefix="/v1", description="Predictions")


def _send(service: Service, files: dict[str, Any], **options: Any) -> AsyncResult:
    """Check the service and the upload, then queue the prediction on the flavor's queue."""
    if service.status != RUNNING:
        raise ServiceNotRunning(f"service {service.id} is {service.status}; start it and wait "
                                "for Running before predicting")
    upload = files.get("images")
    data = b""
    if upload:
        try:
            data = upload.read()
        finally:
            upload.close()  # large uploads are spooled to a temporary file
    settings = context.settings()
    inspect(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    return context.celery().send_task(
        names.PREDICT, args=[service.version_id, data], queue=service.flavor, serializer="msgpack",
        **options)


@blp.route("/services/<string:service_id>/predict")
class Predict(MethodView):
    @blp.arguments(ImageFilesSchema, location="files")
    @blp.response(200, PredictionSchema)
    def post(self, files: dict[str, Any], service_id: str) -> dict[str, Any]:
        """Detect objects in one image and wait for the answer."""
        started = time.perf_counter()
        timeout = context.settings().predict_timeout
        reply_to = replies.new_key()
        # No result-backend entry for a sync call: the answer comes back on `reply_to`, and a
        # task still queued when the caller has given up expires instead of running for nobody.
        _send(g.service, files, kwargs={"reply_to": reply_to}, ignore_result=True, expires=timeout)
        ok, inference_ms = False, None
        try:
            reply = replies.wait(context.redis_client(), reply_to, timeout)
            if reply is None:
                raise PredictionTimeout(f"no answer from a {g.service.flavor} worker within "
                                        f"{timeout:g} s")
            if "error" in reply:
                err = reply["error"]
                raise replies.RemoteError(err["code"], err["message"], reply["status"])
            answer: dict[str, Any] = reply["result"]
            ok, inference_ms = True, answer.get("inference_ms")
            return answer
        finally:
            monitoring.record(context.redis_client(), service_id,
                              (time.perf_counter() - started) * 1000, ok, inference_ms)


@blp.route("/services/<string:service_id>/predictions")
class Submit(MethodView):
    @blp.arguments(ImageFilesSchema, location="files")
    @blp.response(202, TaskCreatedSchema)
    def post(self, files: dict[str, Any], service_id: str) -> dict[str, str]:
        """Queue a prediction and answer at once with its task id."""
        result = _send(g.service, files)
        context.redis_client().set(TASK_KEY.format(task_id=result.id), service_id,
                                   ex=context.settings().result_ttl)
        return {"task_id": result.id}


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
