"""Predictions: synchronous, asynchronous by task id, and the task's result.

A sync prediction, from the socket to the model and back:
1. entrance.Entrance: request id, arrival time, the body's deadline;
2. entrance.check_body: the route's body limit against the announced length (413);
3. auth.check_request: the key or admin token, and the service's row (401/403/404);
4. _check_running below: the service is Running (409) and under its traffic limit (429, the
   Redis-wide limiter of service.ratelimit), still before the body is read;
5. Predict.post: the upload read by werkzeug, its header checked (400/413), then
   sync.predict -> detserve.lane.client: a frame on the flavor's Redis lane, the answer on a
   reply key; a worker's detserve.lane.consumer runs the model (inference.worker.WorkerState);
6. _record: Server-Timing and the service's monitoring counts.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery.result import AsyncResult
from flask import Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint

from detserve import tasknames as names
from detserve.errors import for_caller
from detserve.processing import headers as images
from detserve.processing.options import BOX_FORMATS
from detserve.service import traffic
from detserve_api import context
from detserve_api.auth import TASK_KEY
from detserve_api.entrance import STARTED
from detserve_api.errors import REQUEST_ID
from detserve_api.resources.predictions import sync
from detserve_api.resources.predictions.schemas import (
    PIN_PARAMETER,
    PredictionSchema,
    TaskCreatedSchema,
    TaskSchema,
)
from detserve_api.uploads import image_upload

blp = Blueprint("predictions", __name__, url_prefix="/v1", description="Predictions")
OPTION_FIELDS = {
    "score_threshold": {"type": "number", "minimum": 0, "maximum": 1,
                        "description": "keep boxes scoring at least this (default: the version's)"},
    "class_thresholds": {"type": "string", "example": '{"person": 0.5}',
                         "description": "JSON object: a threshold per class name, over "
                                        "score_threshold"},
    "iou_threshold": {"type": "number", "minimum": 0, "maximum": 1,
                      "description": "NMS overlap above which the lower-scoring box goes"},
    "max_detections": {"type": "integer", "minimum": 1, "maximum": 1000,
                       "description": "at most this many boxes, best first"},
    "classes": {"type": "string", "example": "person,car",
                "description": "keep only these classes: a comma list or a JSON list"},
    "box_format": {"type": "string", "enum": list(BOX_FORMATS), "default": "yxyx",
                   "description": "yxyx: [y_min, x_min, y_max, x_max]; xywh: [x_min, y_min, "
                                  "width, height]; _norm: divided by the image's width/height"},
}
IMAGE_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["images"],
    "properties": {"images": {"type": "string", "format": "binary",
                              "description": "one JPG, JPEG, BMP or PNG image"},
                   **OPTION_FIELDS}}}}}
OPTION_PARAMETERS = [{"in": "query", "name": name, "required": False, "schema": schema,
                      "description": "the same as the form field (a form field wins)"}
                     for name, schema in OPTION_FIELDS.items()] + [PIN_PARAMETER]
WITH_IMAGE = {"predictions.Predict", "predictions.Submit"}


@blp.before_request
def _check_running() -> None:
    if request.endpoint in WITH_IMAGE:
        g.timings = sync.Timings(request.environ.get(STARTED, 0.0))
        sync.check_running(g.service)
        context.limiter().check(g.service.id, g.service.traffic_limit_qps)  # before the body
        g.service = traffic.route(g.service, request.headers.get(traffic.PIN_HEADER))  # version


@blp.after_request
def _record(response: Response) -> Response:
    timings: sync.Timings | None = g.get("timings")
    routed = g.get("service")
    if isinstance(routed, traffic.Routed):  # the version that answered (or will)
        response.headers[traffic.PIN_HEADER] = str(routed.version)
    if request.endpoint == "predictions.Predict" and timings is not None:
        response.headers["Server-Timing"] = timings.server_timing()
        context.monitor().record(g.service.id, timings.elapsed_ms(),
                                 response.status_code == 200, timings.inference_ms,
                                 getattr(routed, "version", None))
    return response


def _checked_image() -> tuple[bytes, dict[str, Any]]:
    """The upload, once its header is acceptable, and the answer options (form fields over
    query parameters), checked before anything is queued."""
    data = image_upload(request)
    sync.check_image(data, context.settings())
    values = {**request.args.to_dict(), **request.form.to_dict()}
    return data, sync.answer_options(values, g.service, context.runtime().store)


@blp.route("/services/<string:service_id>/predict")
class Predict(MethodView):
    @blp.doc(requestBody=IMAGE_BODY, parameters=OPTION_PARAMETERS)
    @blp.response(200, PredictionSchema)
    def post(self, service_id: str) -> Response:
        """Detect objects in one image and wait for the answer."""
        image, options = _checked_image()
        body = sync.predict(context.lane(), g.service, image, g.timings,
                            request.environ.get(REQUEST_ID, ""), options)
        return current_app.response_class(body, mimetype="application/json")


@blp.route("/services/<string:service_id>/predictions")
class Submit(MethodView):
    @blp.doc(requestBody=IMAGE_BODY, parameters=OPTION_PARAMETERS)
    @blp.response(202, TaskCreatedSchema)
    def post(self, service_id: str) -> dict[str, str]:
        """Queue a prediction and answer at once with its task id."""
        (image, options), task_id = _checked_image(), str(uuid.uuid4())
        image_key = f"detserve:image:{task_id}"  # the task carries the key, not the bytes
        pipe = context.redis_client().pipeline(transaction=False)
        pipe.set(image_key, image, ex=images.KEEP_SECONDS)
        pipe.set(TASK_KEY.format(task_id=task_id), service_id, ex=context.settings().result_ttl)
        pipe.execute()
        # the options only when asked for: a plain task stays what earlier workers take
        args = [g.service.version_id, image_key, *([options] if options else [])]
        context.celery().send_task(names.PREDICT, args=args, queue=g.service.flavor,
                                   task_id=task_id)
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
        elif state == "FAILURE":  # the worker's log has the task id beside the whole story
            body["error"] = for_caller(result.result, "the prediction", incident=task_id).message
        elif state not in ("PENDING", "STARTED"):
            body["status"] = "PENDING"  # RECEIVED/RETRY look the same to a caller
        return body
