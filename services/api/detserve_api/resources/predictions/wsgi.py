"""The two routes that take an image, as a small WSGI app mounted beside Flask.

A prediction is the one request a client sends in a loop, so its route skips what Flask adds to
every request (a request context, URL adapters, hooks, a view layer); it shares everything else.
A sync prediction, from the socket to the model and back:
1. entrance.Entrance (around both apps): the request id, the arrival time, the route's body limit
   from the announced length (413, before any byte is read), the body's deadline (408);
2. activity.Activity (around both apps): log lines about the service, the Warning header of a
   service whose stop is near, the idle auto stop's activity;
3. PredictionApp.predict below: the caller (auth.service_access: the key or the admin token, and
   the service's hot row in one query; 401/403/404), the service Running (409) and under its
   traffic limit (429), all judged before the body is read; the version that answers (by the
   service's weights, or the caller's X-Model-Version pin: service/traffic.py); then the upload
   (uploads.py) and its header (400/413), the answer options (400), and sync.predict: a frame on
   the flavor's Redis lane (detserve.lane), whose worker runs the model;
4. Server-Timing and the service's monitoring counts, on every answer, errors too.
Every failure is answered by errors.response_for, the renderer Flask's handlers use.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask
from werkzeug.wrappers import Response

from detserve import tasknames as names
from detserve.errors import DetserveError
from detserve.processing import headers as images
from detserve.service import traffic
from detserve_api import auth
from detserve_api.entrance import STARTED, StartResponse, WSGIApp
from detserve_api.errors import REQUEST_ID, response_for
from detserve_api.resources.predictions import sync
from detserve_api.uploads import read_upload

PIN = "HTTP_" + traffic.PIN_HEADER.upper().replace("-", "_")  # the caller's pinned version
ROUTES = re.compile(r"/v1/services/(?P<service_id>[^/]+)/(?P<action>predict|predictions)\Z")


def predict_path(service_id: str) -> str:
    """The sync route of a service, as ROUTES matches it."""
    return f"/v1/services/{service_id}/predict"


class MethodNotAllowed(DetserveError):
    status_code = 405
    code = "method_not_allowed"
    headers = {"Allow": "POST"}


class PredictionApp:
    """`PredictionApp(app, app.wsgi_app)`: the image routes here, every other one to Flask."""

    def __init__(self, app: Flask, flask: WSGIApp) -> None:
        self.flask, self.ext, self.celery = flask, app.extensions["detserve"], app.extensions["celery"]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        match = ROUTES.match(environ.get("PATH_INFO", ""))
        if match is None:
            return self.flask(environ, start_response)
        service_id, action = match.group("service_id", "action")
        timings, routed = None, None
        try:
            if environ.get("REQUEST_METHOD") != "POST":
                raise MethodNotAllowed(f"{action} takes POST only")
            service = self._caller(environ, service_id)
            if action == "predict":  # from here on the answer counts in the service's monitoring
                timings = sync.Timings(environ.get(STARTED, 0.0))
            sync.check_running(service)
            self.ext["limiter"].check(service.id, service.traffic_limit_qps)
            service = routed = traffic.route(service, environ.get(PIN))  # the version answering
            if timings is not None:
                response = self.predict(environ, service, timings)
            else:
                response = self.submit(environ, service)
        except Exception as exc:  # noqa: BLE001 - every failure is rendered, 5xx ones logged
            response = response_for(exc, environ.get(REQUEST_ID, ""))
        if routed is not None:  # the version that answered (or will)
            response.headers[traffic.PIN_HEADER] = str(routed.version)
        if timings is not None:
            response.headers["Server-Timing"] = timings.server_timing()
            self.ext["monitor"].record(service_id, timings.elapsed_ms(),
                                       response.status_code == 200, timings.inference_ms,
                                       routed.version if routed is not None else None)
        return response(environ, start_response)

    def _caller(self, environ: dict[str, Any], service_id: str) -> Any:
        """The service's hot row, if the caller may use it: from the headers alone."""
        admin = auth.is_admin(environ.get("HTTP_AUTHORIZATION", ""), self.ext["admin_token"])
        return auth.service_access(self.ext["runtime"].store, service_id, admin,
                                   environ.get("HTTP_X_SERVICE_KEY", ""))

    def _checked_upload(self, environ: dict[str, Any], service: Any
                        ) -> tuple[bytes, dict[str, Any]]:
        """The image, once its header is acceptable, and the answer options (form fields over
        query parameters), checked before anything is queued."""
        upload = read_upload(environ)
        sync.check_image(upload.image, self.ext["settings"])
        values: dict[str, str] = {}
        for name, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True):
            values.setdefault(name, value)  # the first of each, as for the form's fields
        values.update(upload.fields)
        return upload.image, sync.answer_options(values, service, self.ext["runtime"].store)

    def predict(self, environ: dict[str, Any], service: Any, timings: sync.Timings) -> Response:
        """Detect objects in one image and wait for the answer."""
        image, options = self._checked_upload(environ, service)
        body = sync.predict(self.ext["lane"], service, image, timings,
                            environ.get(REQUEST_ID, ""), options)
        return Response(body, mimetype="application/json")

    def submit(self, environ: dict[str, Any], service: Any) -> Response:
        """Queue a prediction and answer at once with its task id."""
        (image, options), task_id = self._checked_upload(environ, service), str(uuid.uuid4())
        image_key = f"detserve:image:{task_id}"  # the task carries the key, not the bytes
        pipe = self.ext["redis"].pipeline(transaction=False)
        images.keep(pipe, image_key, image)
        pipe.set(auth.TASK_KEY.format(task_id=task_id), service.id,
                 ex=self.ext["settings"].result_ttl)
        pipe.execute()
        # the options only when asked for: a plain task stays what earlier workers take
        args = [service.version_id, image_key, *([options] if options else [])]
        self.celery.send_task(names.PREDICT, args=args, queue=service.flavor, task_id=task_id)
        return Response(f'{{"task_id": "{task_id}"}}', status=202, mimetype="application/json")
