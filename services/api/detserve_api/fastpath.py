"""The sync prediction route without Flask's per-request machinery.

At concurrency 1 the API's code runs cold: every inference in between has flushed the caches, so
the amount of code on a prediction's path costs more than its hot-loop time suggests. Flask's
share (request context, URL map, before- and after-request hooks, flask-smorest's wrappers, the
response object) was a third of the API's time per prediction on our 2-core machines. This WSGI
middleware serves POST /v1/services/<id>/predict itself, with the same steps the Flask view runs
(auth.service_access, resources/predictions/sync.py). Any request it would not answer with a
prediction — no or bad credentials, a service not Running, a bad or missing image, a body it does
not read itself — goes on to the Flask app with the body as read, so those errors come from one
place, as documented; errors after the image was queued are rendered by errors.response_for, as
the Flask app renders them.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from detserve.errors import DetserveError
from detserve_api import auth, errors
from detserve_api.resources.predictions import sync
from detserve_api.uploads import multipart_boundary, split_image

PATH = re.compile(r"/v1/services/([^/]+)/predict\Z")
StartResponse = Callable[..., Any]


class PredictFastPath:
    """Wraps the Flask app's wsgi_app: app.wsgi_app = PredictFastPath(app)."""

    def __init__(self, app: Flask) -> None:
        self.app, self.flask = app, app.wsgi_app
        ext = app.extensions["detserve"]
        self.settings, self.lanes, self.monitor = ext["settings"], ext["lanes"], ext["monitor"]
        self.store, self.admin_token = ext["runtime"].store, ext["admin_token"]
        self.max_body = app.config["MAX_CONTENT_LENGTH"]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        match = PATH.match(environ.get("PATH_INFO", ""))
        if match is None or environ.get("REQUEST_METHOD") != "POST":
            return self.flask(environ, start_response)
        timings = sync.Timings(request=time.perf_counter())
        boundary = multipart_boundary(environ.get("CONTENT_TYPE", ""))
        length = environ.get("CONTENT_LENGTH") or ""
        if boundary is None or not length.isdigit() or not 0 < int(length) <= self.max_body:
            return self.flask(environ, start_response)  # chunked, too big or not multipart
        body = environ["wsgi.input"].read(int(length))
        environ["wsgi.input"] = io.BytesIO(body)  # for the Flask app, should it answer instead
        try:
            admin = auth.is_admin(environ.get("HTTP_AUTHORIZATION", ""), self.admin_token)
            service = auth.service_access(self.store, match.group(1), admin,
                                          environ.get("HTTP_X_SERVICE_KEY", ""))
            timings.started = time.perf_counter()
            sync.check_running(service)
            image = split_image(body, boundary)
            if not image:  # none, or a body only werkzeug's parser should judge
                return self.flask(environ, start_response)
            sync.check_image(image, self.settings)
        except DetserveError:
            return self.flask(environ, start_response)  # it answers with the documented error
        try:
            result = sync.predict(self.lanes, service, image, self.settings.predict_timeout,
                                  timings)
        except Exception as exc:  # noqa: BLE001 - rendered as the Flask app renders it
            with self.app.app_context():
                response, status = errors.response_for(exc)
                response.status_code = status
            response.headers["Server-Timing"] = timings.server_timing()
            self.monitor.record(service.id, timings.elapsed_ms(), False)
            return response(environ, start_response)  # type: ignore[no-any-return]
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(result))),
                                  ("Server-Timing", timings.server_timing())])
        self.monitor.record(service.id, timings.elapsed_ms(), True, timings.inference_ms)
        return [result]
