"""Model versions: register (checked, stored by hash), look up, delete."""

from __future__ import annotations

from sqlalchemy import func, select

from detserve.errors import InvalidModel, NotFound, VersionInUse, quoted
from detserve.service import status, traffic
from detserve.service.deployments import Runtime
from detserve.service.packages import read_package
from detserve.store import ModelVersion, Service, utcnow


def register_version(
    rt: Runtime, model: str, data: bytes, config_text: str | None, version_status: str,
    *, max_bytes: int,
) -> ModelVersion:
    """Check a model package, store its bytes by hash and record the next version number."""
    if version_status not in status.VERSION_STATUSES:
        raise InvalidModel(f"status {version_status!r} is not one of {', '.join(status.VERSION_STATUSES)}",
                           fields={"status": [f"one of {', '.join(status.VERSION_STATUSES)}"]})
    package = read_package(data, config_text, max_bytes=max_bytes)
    digest = rt.artifacts.put(package.onnx_bytes)
    with rt.store.session() as session:
        latest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model == model))
        row = ModelVersion(
            model=model, version=(latest or 0) + 1, status=version_status, sha256=digest,
            size_bytes=len(package.onnx_bytes), labels=package.labels, input=package.input,
            output=package.output, created_at=utcnow(),
        )
        session.add(row)
    return row


def get_version(rt: Runtime, model: str, version: int) -> ModelVersion:
    with rt.store.session(readonly=True) as session:
        row = session.scalar(
            select(ModelVersion).where(ModelVersion.model == model, ModelVersion.version == version)
        )
    if row is None:
        raise NotFound(f"model {quoted(model)} has no version {version}")
    return row


def delete_version(rt: Runtime, model: str, version: int) -> None:
    """Delete a version no live service uses (its bytes stay if another version shares them)."""
    row = get_version(rt, model, version)
    with rt.store.session() as session:
        users = session.scalars(
            select(Service.id).where(Service.version_id == row.id, Service.status != status.STOPPED)
        ).all()
        if users:
            raise VersionInUse(f"version {version} of {quoted(model)} is used by service(s) "
                               f"{', '.join(users)} that are not Stopped; stop or delete them first")
        sharing = [svc.id for svc in session.scalars(select(Service).where(
            Service.version_id != row.id, Service.traffic.is_not(None)))
            if row.id in traffic.served_ids(svc)]
        if sharing:
            raise VersionInUse(f"version {version} of {quoted(model)} is one of the versions of "
                               f"service(s) {', '.join(sharing)}; change their versions first")
        for svc in session.scalars(select(Service).where(Service.version_id == row.id)):
            session.delete(svc)
        session.delete(session.get(ModelVersion, row.id))
        shared = session.scalar(select(func.count()).where(ModelVersion.sha256 == row.sha256))
    if not shared:
        rt.artifacts.delete(row.sha256)


