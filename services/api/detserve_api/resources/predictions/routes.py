"""Predictions: the task of an asynchronous prediction, and the documentation of the two image
routes, which are served by their own WSGI app (wsgi.py) beside Flask.
"""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult
from flask.views import MethodView
from flask_smorest import Api, Blueprint
from werkzeug.routing import Map, Rule

from detserve.errors import for_caller
from detserve.processing.options import BOX_FORMATS
from detserve_api import context
from detserve_api.resources.predictions.schemas import (
    PIN_PARAMETER,
    PredictionSchema,
    TaskCreatedSchema,
    TaskSchema,
)

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
ERRORS = {"$ref": "#/components/responses/DEFAULT_ERROR"}


def document(api: Api) -> None:
    """The OpenAPI document of the two image routes (wsgi.PredictionApp serves them)."""
    for path, summary, status, schema in (
            ("predict", "Detect objects in one image and wait for the answer.", 200,
             PredictionSchema),
            ("predictions", "Queue a prediction and answer at once with its task id.", 202,
             TaskCreatedSchema)):
        # a rule of a Map of its own: flask-smorest's plugin reads the path and its parameter
        rule = next(Map([Rule(f"/v1/services/<string:service_id>/{path}", defaults={})]).iter_rules())
        api.spec.path(rule=rule, operations={"post": {
                          "summary": summary, "tags": [blp.name], "requestBody": IMAGE_BODY,
                          "parameters": OPTION_PARAMETERS, "responses": {
                              str(status): {"description": "OK" if status == 200 else "Accepted",
                                            "content": {"application/json": {"schema": schema}}},
                              "default": ERRORS}}})


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
