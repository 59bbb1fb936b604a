"""Schemas of predictions: the result, the async task."""

from __future__ import annotations

from marshmallow import Schema, fields

from detserve.service import traffic

# the pin of a version (service/traffic.py); the answer names the version in the same header
PIN_PARAMETER = {"in": "header", "name": traffic.PIN_HEADER, "required": False,
                 "schema": {"type": "integer", "minimum": 1},
                 "description": "answer with this version (one the service serves, weight 0 "
                                "included) instead of one drawn by weight; another is a 400. "
                                "Every answer for which a version was chosen names it in the "
                                "same header"}


class PredictionSchema(Schema):
    detection_classes = fields.List(fields.String())
    detection_boxes = fields.List(fields.List(fields.Float()),
                                  metadata={"description": "[y_min, x_min, y_max, x_max] in pixels, "
                                                           "or as the request's box_format asks"})
    detection_scores = fields.List(fields.Float())
    inference_ms = fields.Float(metadata={"description": "time spent in the worker's pipeline"})
    version = fields.Integer(allow_none=True, metadata={
        "description": "async results: the version that answered (sync answers say it in the "
                       "X-Model-Version header)"})


class TaskCreatedSchema(Schema):
    task_id = fields.String()


class TaskSchema(Schema):
    task_id = fields.String()
    status = fields.String()
    result = fields.Nested(PredictionSchema, allow_none=True)
    error = fields.String(allow_none=True)
