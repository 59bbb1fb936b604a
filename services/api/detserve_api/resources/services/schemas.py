"""Schemas of services: the deploy request, the service, its events and monitoring."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from detserve.service import traffic
from detserve.tasknames import FLAVORS

AUTO_STOP_PRESETS = (1, 2, 4, 6)


class AutoStopArgsSchema(Schema):
    enabled = fields.Boolean(load_default=True)
    hours = fields.Integer(
        strict=True, load_default=1, validate=validate.Range(1, 24),
        metadata={"description": "1, 2, 4 or 6 (presets), or any integer 1..24 (custom)"},
    )
    idle_minutes = fields.Integer(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(1, 1440),
        metadata={"description": "stop after this many minutes without a prediction (1..1440); "
                                 "null or absent: no idle stop. Independent of `enabled`"},
    )


class TrafficLimitSchema(Schema):
    qps = fields.Float(
        required=True, allow_nan=False,
        validate=validate.Range(0, 100_000, min_inclusive=False,
                                error="must be a number over 0 and at most 100000"),
        metadata={"description": "predictions per second, over all API processes (both routes "
                                 "together); fractions allowed, e.g. 0.5. A second's worth may "
                                 "come at once; beyond it, 429 rate_limited with Retry-After"})


class VersionWeightSchema(Schema):
    version = fields.Integer(required=True, strict=True, validate=validate.Range(
        1, 2**31 - 1, error="must be a version number of the model (1, 2, ...)"))
    weight = fields.Integer(required=True, strict=True, validate=validate.Range(
        0, traffic.TOTAL_WEIGHT, error="must be an integer from 0 to 100"), metadata={
        "description": "% of the traffic; 0: served only when pinned (X-Model-Version)"})


def _check_split(items: list[dict[str, Any]]) -> None:
    problem = traffic.split_problem(items)
    if problem:
        raise ValidationError(problem)


def versions_field(more: str = "", **extra: Any) -> fields.Field:
    return fields.List(fields.Nested(VersionWeightSchema), validate=_check_split, metadata={
        "description": f"1 to {traffic.MAX_VERSIONS} versions of the model with integer weights "
                       "adding up to 100, e.g. [{\"version\": 3, \"weight\": 90}, {\"version\": 4, "
                       "\"weight\": 10}]; each prediction goes to one of them by weight, or to "
                       "the one its X-Model-Version header pins" + more}, **extra)


class DeployArgsSchema(Schema):
    name = fields.String(load_default=None, validate=validate.Length(1, 128))
    model = fields.String(required=True, validate=validate.Length(1, 128))
    # versions are numbered 1, 2, ...; the bound keeps a huge number a 400, not a database error
    version = fields.Integer(load_default=None, strict=True, validate=validate.Range(1, 2**31 - 1),
                             metadata={"description": "the version to serve; required unless "
                                                      "`versions` is given"})
    versions = versions_field(load_default=None)
    flavor = fields.String(required=True, validate=validate.OneOf(FLAVORS))
    compute_nodes = fields.Integer(
        strict=True, load_default=1,
        validate=validate.Equal(1, error="compute_nodes is fixed at 1"),
    )
    auto_stop = fields.Nested(AutoStopArgsSchema, load_default=lambda: {"enabled": True, "hours": 1})
    traffic_limit = fields.Nested(TrafficLimitSchema, load_default=None, allow_none=True,
                                  metadata={"description": "null or absent: no limit"})

    @validates_schema(pass_original=True, skip_on_field_errors=False)  # named with the others
    def _one_version(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        split, version = data.get("versions"), data.get("version")
        sent_split = isinstance(original, dict) and original.get("versions") is not None
        if split is None and version is None and not sent_split:
            raise ValidationError("send version, or versions with their weights", "version")
        numbers = [i.get("version") for i in split or () if isinstance(i, dict)]
        if split and version is not None and None not in numbers and version not in numbers:
            raise ValidationError(f"version {version} is not in versions; send one of them, "
                                  "or versions alone", "version")


class PatchArgsSchema(Schema):
    auto_stop = fields.Nested(AutoStopArgsSchema, metadata={"description": "absent: unchanged"})
    traffic_limit = fields.Nested(TrafficLimitSchema, allow_none=True, metadata={
        "description": "null: remove the limit; absent: unchanged"})
    versions = versions_field(". Absent: unchanged. A Running service loads the new versions "
                              "first and switches when they are ready (pending_versions)")

    @validates_schema
    def _something(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("send auto_stop, traffic_limit and/or versions", "_schema")


class AutoStopSchema(Schema):
    enabled = fields.Boolean()
    hours = fields.Integer()
    stop_at = fields.String(allow_none=True)
    idle_minutes = fields.Integer(allow_none=True)
    idle_stop_at = fields.String(allow_none=True, metadata={
        "description": "when the idle stop fires if no prediction comes before"})
    stops_at = fields.String(allow_none=True, metadata={
        "description": "the nearer of stop_at and idle_stop_at"})


class PhaseSchema(Schema):
    name = fields.String(metadata={"description": "queued, fetching, loading, building_engine, "
                                                  "warming_up or ready"})
    label = fields.String(metadata={"description": "the step in words, e.g. building TensorRT engine"})
    detail = fields.String(allow_none=True, metadata={
        "description": "e.g. the engine's precision and batch profile: fp16, batch 1/8/32"})
    started_at = fields.String()
    elapsed_seconds = fields.Float()
    failed = fields.Boolean(metadata={"description": "this step failed; `error` says why"})
    bytes_done = fields.Integer(allow_none=True, metadata={"description": "fetching: bytes fetched"})
    bytes_total = fields.Integer(allow_none=True, metadata={"description": "fetching: artifact size"})


class DeployStepSchema(Schema):
    name = fields.String()
    label = fields.String()
    detail = fields.String(allow_none=True)
    at = fields.String()
    progress = fields.Integer()
    failed = fields.Boolean()


class EngineSchema(Schema):
    backend = fields.String(metadata={"description": "tensorrt"})
    version = fields.String(metadata={"description": "TensorRT's version"})
    precision = fields.String(metadata={"description": "fp16 or fp32: what was built, not asked"})
    max_batch = fields.Integer()
    contexts = fields.Integer(metadata={"description": "execution contexts that can run at once"})


class ServedVersionSchema(Schema):
    version = fields.Integer()
    weight = fields.Integer(metadata={"description": "% of the traffic"})


class PendingVersionsSchema(Schema):
    versions = fields.List(fields.Nested(ServedVersionSchema))
    state = fields.String(metadata={"description": "loading: the workers load them, the current "
                                                   "versions serve meanwhile; failed: one did not "
                                                   "load (error says why), the current ones serve on"})
    error = fields.String(allow_none=True)
    requested_at = fields.String()


class ServiceSchema(Schema):
    id = fields.String()
    name = fields.String()
    model = fields.String()
    version = fields.Integer()
    flavor = fields.String()
    compute_nodes = fields.Integer()
    status = fields.String()
    auto_stop = fields.Nested(AutoStopSchema)
    traffic_limit = fields.Nested(TrafficLimitSchema, allow_none=True,
                                  metadata={"description": "null: no limit"})
    versions = fields.List(fields.Nested(ServedVersionSchema), metadata={
        "description": "the versions served and their weights; `version` is the one of the "
                       "highest weight"})
    pending_versions = fields.Nested(PendingVersionsSchema, allow_none=True, metadata={
        "description": "a change of versions not serving yet; null: none"})
    created_at = fields.String()
    updated_at = fields.String()
    running_seconds = fields.Float()
    cost = fields.Float()
    error = fields.String(allow_none=True)
    stopping_soon = fields.Boolean(metadata={
        "description": "a stop (fixed or idle) is less than 10 minutes away"})
    predict_url = fields.String()
    progress = fields.Integer(allow_none=True, metadata={
        "description": "how far the last deploy got, 0-100 (100: Running); null when unknown"})
    phase = fields.Nested(PhaseSchema, allow_none=True, metadata={
        "description": "the deploy's current step (or the failed one); null when unknown"})
    deploy_steps = fields.List(fields.Nested(DeployStepSchema), metadata={
        "description": "the last deploy's steps so far, in order"})
    engine = fields.Nested(EngineSchema, allow_none=True, metadata={
        "description": "the engine a GPU worker built or reused (null on CPU)"})
    key = fields.String(metadata={"description": "only in the answer to deploy and key rotation"})


class ServiceListSchema(Schema):
    services = fields.List(fields.Nested(ServiceSchema))


class KeySchema(Schema):
    key = fields.String()


class EventSchema(Schema):
    at = fields.String()
    from_ = fields.String(data_key="from", allow_none=True)
    to = fields.String()
    reason = fields.String()


class EventListSchema(Schema):
    events = fields.List(fields.Nested(EventSchema))




class LatencySchema(Schema):
    p50 = fields.Float(allow_none=True)
    p95 = fields.Float(allow_none=True)
    p99 = fields.Float(allow_none=True)


class VersionCountSchema(Schema):
    version = fields.Integer()
    requests = fields.Integer()
    failures = fields.Integer()


class SeriesPointSchema(Schema):
    minute = fields.String()
    requests = fields.Integer()
    failures = fields.Integer()
    p50_ms = fields.Float(allow_none=True)
    versions = fields.List(fields.Nested(VersionCountSchema), metadata={
        "description": "the minute's requests and failures by the version that answered"})


class MonitoringSchema(Schema):
    requests = fields.Integer()
    failures = fields.Integer()
    latency_ms = fields.Nested(LatencySchema)
    versions = fields.List(fields.Nested(VersionCountSchema), metadata={
        "description": "the last hour's requests and failures by the version that answered"})
    series = fields.List(fields.Nested(SeriesPointSchema))


class ExtendArgsSchema(Schema):
    hours = fields.Integer(required=True, strict=True, validate=validate.Range(1, 24),
                           metadata={"description": "push the auto-stop time back by 1..24 hours"})


class LogArgsSchema(Schema):
    since = fields.String(load_default="60m", metadata={
        "description": "5m, 30m, 60m, or an ISO-8601 time (UTC if it names no zone)"})
    limit = fields.Integer(load_default=500, strict=False, validate=validate.Range(1, 5000))


class LogLineSchema(Schema):
    time = fields.String()
    component = fields.String(metadata={"description": "api, worker-cpu, worker-gpu, scheduler"})
    level = fields.String()
    message = fields.String()
    request_id = fields.String(allow_none=True)
    process = fields.String(metadata={"description": "host/pid that wrote it"})


class LogListSchema(Schema):
    since = fields.String()
    lines = fields.List(fields.Nested(LogLineSchema))


class UsagePointSchema(Schema):
    at = fields.Float(metadata={"description": "epoch seconds"})
    cpu_percent = fields.Float(metadata={"description": "% of one core"})
    rss_bytes = fields.Integer()
    gpu_utilization_percent = fields.Float(allow_none=True)
    gpu_memory_used_bytes = fields.Float(allow_none=True)


class WorkerUsageSchema(Schema):
    worker = fields.String()
    flavor = fields.String()
    pid = fields.Integer()
    at = fields.Float()
    cpu_seconds = fields.Float()
    rss_bytes = fields.Integer()
    model_bytes = fields.Integer(metadata={
        "description": "resident memory the model added when it loaded (approximate)"})
    model_device_bytes = fields.Integer(allow_none=True)
    gpu = fields.Dict(allow_none=True)
    series = fields.List(fields.Nested(UsagePointSchema))


class UsageSchema(Schema):
    workers = fields.List(fields.Nested(WorkerUsageSchema))
