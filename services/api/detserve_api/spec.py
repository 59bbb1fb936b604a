"""The OpenAPI document's error shape: the one every error has (../shared/API.md), so that a
client generated from /openapi.json, or a fuzzer checking answers against it, reads errors right."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from apispec import BasePlugin
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


class ValidationIs400(BasePlugin):  # type: ignore[misc]
    """flask-smorest documents a schema failure as 422; detserve answers 400 (the contract)."""

    def operation_helper(self, path: str | None = None,
                         operations: dict[str, Any] | None = None, **_: Any) -> None:
        for operation in (operations or {}).values():
            responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
            for code in (422, "422"):
                if code in responses:
                    del responses[code]
                    responses.setdefault(400, "BAD_REQUEST")
