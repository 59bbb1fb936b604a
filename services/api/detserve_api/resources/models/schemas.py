"""Schemas of model versions."""

from __future__ import annotations

from flask_smorest.fields import Upload
from marshmallow import Schema, fields, validate

from detserve.service.status import VERSION_STATUSES


class VersionSchema(Schema):
    model = fields.String()
    version = fields.Integer()
    status = fields.String()
    sha256 = fields.String()
    size_bytes = fields.Integer()
    labels = fields.List(fields.String())
    input = fields.Dict()
    output = fields.Dict()
    created_at = fields.DateTime(format="iso")


class VersionListSchema(Schema):
    versions = fields.List(fields.Nested(VersionSchema))


class ModelSummarySchema(Schema):
    name = fields.String()
    latest_version = fields.Integer()
    versions = fields.Integer()


class ModelListSchema(Schema):
    models = fields.List(fields.Nested(ModelSummarySchema))


class UploadFilesSchema(Schema):
    model = Upload(required=True,
                   metadata={"description": ".onnx file, or .zip with model.onnx + model.json"})


class UploadFormSchema(Schema):
    config = fields.String(load_default=None, metadata={"description": "JSON text, keys as model.json"})
    status = fields.String(load_default="Successful", validate=validate.OneOf(VERSION_STATUSES))
