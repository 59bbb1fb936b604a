"""The errors detserve raises, each with an HTTP status and a stable code.

    DetserveError (500 internal_error)
    ├── ValidationFailed (400 validation_error, with fields)
    │   ├── InvalidModel (400 invalid_model)
    │   ├── InvalidImage (400 invalid_image)
    │   └── InvalidJson (400 invalid_json)
    ├── PayloadTooLarge (413 payload_too_large)
    │   └── ImageTooLarge (413 image_too_large)
    ├── Unauthorized (401 unauthorized)
    ├── Forbidden (403 forbidden)
    ├── NotFound (404 not_found)
    ├── RateLimited (429 rate_limited, with Retry-After)
    ├── Conflict (409 conflict)
    │   ├── ServiceNotRunning (409 service_not_running)
    │   ├── VersionNotDeployable (409 version_not_deployable)
    │   ├── FlavorUnavailable (409 flavor_unavailable)
    │   ├── VersionInUse (409 version_in_use)
    │   └── StaleTransition (409 stale_transition)
    ├── Unavailable (503 not_ready)
    ├── PredictionTimeout (504 prediction_timeout)
    ├── ModelLoadError (500 model_load_error; becomes a service's `error`)
    ├── MissingDependencyError (500 missing_dependency)
    └── InternalError (500 internal_error; a foreign exception as a caller sees it, by incident)

What a caller reads is built by for_caller(): our own errors with foreign text scrubbed of paths,
URLs and engine prefixes; anything else as a stable message and an incident id, whose details
(type, text, traceback) go to the log only.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence

log = logging.getLogger("detserve.errors")


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


class InvalidJson(ValidationFailed):
    code = "invalid_json"


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


class RateLimited(DetserveError):
    """Over the service's traffic limit; `retry_after`: whole seconds until a request passes."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


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


class InternalError(DetserveError):
    """Something failed on our side; the caller gets the incident to quote, the log the rest."""

    def __init__(self, what: str, incident: str) -> None:
        super().__init__(f"{what} failed in the server (incident {incident}; the details are "
                         "in the server's log, not here): try again, and quote the incident if "
                         "it persists")
        self.incident = incident


_ENGINE_PREFIX = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : ")
# ONNX Runtime's "<source file>:<line> <C++ signature>" before its message proper
_SOURCE = re.compile(r"(?:/|[A-Za-z]:\\)\S+:\d+ [\w:~<>]+\([^)]*\)\s*(?:const\s*)?")
_URL = re.compile(r"\b[a-zA-Z][\w+.-]*://\S+")
_PATH = re.compile(r"(?<![\w/.:<-])(?:/|~/|[A-Za-z]:\\)[^\s'\",;()\[\]]+")
MAX_SHOWN = 600  # characters of a message a caller sees
MAX_ENGINE_WORDS = 300  # of that, characters quoted from an engine (ONNX Runtime, TensorRT, Pillow)
MAX_ID_SHOWN = 64  # characters of a caller's id (URL or body) quoted back in an error


def quoted(value: object, limit: int = MAX_ID_SHOWN) -> str:
    """A caller-sent id quoted for an error message, as `!r` would but bounded: at most `limit`
    characters, control and other unprintable ones shown as "?", "\u2026" where it was cut.

    Every message that names an id the caller sent goes through here: echoing a 10 KB URL
    segment (or terminal escapes) back in full helps nobody and fills logs and consoles.
    """
    if not isinstance(value, str):
        return repr(value)
    shown = "".join(c if c.isprintable() else "?" for c in value[:limit])
    return repr(shown + ("\u2026" if len(value) > limit else ""))


def scrub(text: str, limit: int = MAX_SHOWN) -> str:
    """Foreign text fit for a caller: no engine status prefix, source locations, file paths or
    URLs, one line, bounded. What it names of the caller's own model or image stays."""
    text = _SOURCE.sub("", _ENGINE_PREFIX.sub("", text))
    text = _URL.sub("<url>", text)
    text = _PATH.sub("<path>", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def engine_words(exc: BaseException) -> str:
    """An engine's own account of a failure, short enough to quote inside our message."""
    return scrub(str(exc), MAX_ENGINE_WORDS)


def for_caller(exc: BaseException, what: str, incident: str | None = None) -> DetserveError:
    """The error to show a caller for `exc`, raised where `what` (e.g. "the prediction") ran.

    Ours keep their code, status and fields, their text scrubbed; anything else becomes an
    InternalError with an incident id: `incident` where the log already ties one to the story
    (a task id), else a new one, logged here with the exception's type and text.
    """
    if isinstance(exc, DetserveError):
        shown = DetserveError(scrub(exc.message), fields=exc.fields)
        shown.status_code, shown.code = exc.status_code, exc.code
        return shown
    if incident is None:
        incident = uuid.uuid4().hex[:12]
        log.error("incident %s: %s failed: %s: %s", incident, what, type(exc).__name__, exc)
    return InternalError(what[:1].upper() + what[1:], incident)
