"""The OpenAPI document's error shape: the one every error has (../shared/API.md), so that a
client generated from /openapi.json, or a fuzzer checking answers against it, reads errors right."""

from __future__ import annotations

import marshmallow as ma
from flask_smorest import Api


class ErrorDetailSchema(ma.Schema):
    class Meta:
        unknown = ma.INCLUDE  # keys may be added beside these (the contract allows it)

    code = ma.fields.String(required=True, metadata={"description": "stable snake_case code"})
    message = ma.fields.String(required=True,
                               metadata={"description": "what went wrong and what to do"})
    field_problems = ma.fields.Dict(  # "fields" itself is a Schema attribute
        data_key="fields", keys=ma.fields.String(), values=ma.fields.List(ma.fields.String()),
        metadata={"description": "validation errors: each bad field's problems"})


class ErrorSchema(ma.Schema):
    class Meta:
        unknown = ma.INCLUDE

    error = ma.fields.Nested(ErrorDetailSchema, required=True)


class DetserveApi(Api):  # type: ignore[misc]
    """flask-smorest's Api, documenting detserve's error body instead of its own."""

    ERROR_SCHEMA = ErrorSchema
