"""Models and their versions: upload (register), list, get, delete; artifacts for workers."""

from __future__ import annotations

import re
from typing import Any

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import func, select

from detserve.errors import NotFound, quoted
from detserve.service import versions
from detserve.store import ModelVersion
from detserve_api import context
from detserve_api.resources.models.schemas import (
    ModelListSchema,
    UploadFilesSchema,
    UploadFormSchema,
    VersionListSchema,
    VersionSchema,
)

blp = Blueprint("models", __name__, url_prefix="/v1", description="Models and versions")
NAME = "<string(maxlength=128):name>"
UPLOAD_ROUTE = re.compile(r"/v1/models/[^/]+/versions\Z")  # its body limit: the entrance's


@blp.route("/models")
class Models(MethodView):
    @blp.response(200, ModelListSchema)
    def get(self) -> dict[str, Any]:
        """List models with their latest version number."""
        with context.runtime().store.session(readonly=True) as session:
            rows = session.execute(
                select(ModelVersion.model, func.max(ModelVersion.version), func.count())
                .group_by(ModelVersion.model).order_by(ModelVersion.model)
            ).all()
        return {"models": [{"name": n, "latest_version": v, "versions": c} for n, v, c in rows]}


@blp.route(f"/models/{NAME}/versions")
class Versions(MethodView):
    @blp.arguments(UploadFormSchema, location="form")
    @blp.arguments(UploadFilesSchema, location="files")
    @blp.response(201, VersionSchema)
    def post(self, form: dict[str, Any], files: dict[str, Any], name: str) -> ModelVersion:
        """Register a new version from an .onnx file or a .zip package."""
        upload = files["model"]
        try:
            data = upload.read()
        finally:
            upload.close()  # large uploads are spooled to a temporary file
        return versions.register_version(
            context.runtime(), name, data, form["config"], form["status"],
            max_bytes=context.settings().max_model_bytes,
        )

    @blp.response(200, VersionListSchema)
    def get(self, name: str) -> dict[str, Any]:
        """List a model's versions, newest first."""
        with context.runtime().store.session(readonly=True) as session:
            rows = session.scalars(select(ModelVersion).where(ModelVersion.model == name)
                                   .order_by(ModelVersion.version.desc())).all()
        return {"versions": rows}


@blp.route(f"/models/{NAME}/versions/<int(min=1, max=2147483647):version>")
class Version(MethodView):
    @blp.response(200, VersionSchema)
    def get(self, name: str, version: int) -> ModelVersion:
        """Get one version."""
        return versions.get_version(context.runtime(), name, version)

    @blp.response(204)
    def delete(self, name: str, version: int) -> None:
        """Delete a version that no live service uses."""
        versions.delete_version(context.runtime(), name, version)


@blp.route("/artifacts/<string:sha256>")
class Artifact(MethodView):
    @blp.response(200)
    def get(self, sha256: str) -> Response:
        """Download an artifact by hash (workers with no shared disk use this)."""
        artifacts = context.runtime().artifacts
        if not artifacts.exists(sha256):
            raise NotFound(f"no artifact {quoted(sha256)}")
        data = artifacts.get(sha256)
        return Response(data, mimetype="application/octet-stream")
