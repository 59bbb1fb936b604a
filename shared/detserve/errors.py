"""The errors detserve raises, each with an HTTP status and a stable code.

    DetserveError (500 internal_error)
    ├── ValidationFailed (400 validation_error, with fields)
    │   ├── InvalidModel (400 invalid_model)
    │   └── InvalidImage (400 invalid_image)
    ├── PayloadTooLarge (413 payload_too_large)
    │   └── ImageTooLarge (413 image_too_large)
    ├── Unauthorized (401 unauthorized)
    ├── Forbidden (403 forbidden)
    ├── NotFound (404 not_found)
    ├── Conflict (409 conflict)
    │   ├── ServiceNotRunning (409 service_not_running)
    │   ├── VersionNotDeployable (409 version_not_deployable)
    │   ├── FlavorUnavailable (409 flavor_unavailable)
    │   ├── VersionInUse (409 version_in_use)
    │   └── StaleTransition (409 stale_transition)
    ├── Unavailable (503 not_ready)
    ├── PredictionTimeout (504 prediction_timeout)
    ├── ModelLoadError (500 model_load_error; becomes a service's `error`)
    └── MissingDependencyError (500 missing_dependency)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class DetserveError(Exception):
    """Base of every error detserve reports to a user."""

    status_code = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, fields: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = {k: list(v) for k, v in (fields or {}).items()}


class ValidationFailed(DetserveError):
    status_code = 400
    code = "validation_error"


class InvalidModel(ValidationFailed):
    code = "invalid_model"


class InvalidImage(ValidationFailed):
    code = "invalid_image"


class PayloadTooLarge(DetserveError):
    status_code = 413
    code = "payload_too_large"


class ImageTooLarge(PayloadTooLarge):
    code = "image_too_large"


class Unauthorized(DetserveError):
    status_code = 401
    code = "unauthorized"


class Forbidden(DetserveError):
    status_code = 403
    code = "forbidden"


class NotFound(DetserveError):
    status_code = 404
    code = "not_found"


class Conflict(DetserveError):
    status_code = 409
    code = "conflict"


class ServiceNotRunning(Conflict):
    code = "service_not_running"


class VersionNotDeployable(Conflict):
    code = "version_not_deployable"


class FlavorUnavailable(Conflict):
    code = "flavor_unavailable"


class VersionInUse(Conflict):
    code = "version_in_use"


class StaleTransition(Conflict):
    code = "stale_transition"


class Unavailable(DetserveError):
    status_code = 503
    code = "not_ready"


class PredictionTimeout(DetserveError):
    status_code = 504
    code = "prediction_timeout"


class ModelLoadError(DetserveError):
    code = "model_load_error"


class MissingDependencyError(DetserveError):
    code = "missing_dependency"
