"""The reference `make bench --reference` compares detserve with: a plain Flask app that runs the
same Detector in its own process, under gunicorn with 2 sync workers. No queue, no auth, no checks
before decoding: the floor of what serving this pipeline over HTTP costs on the machine.

gunicorn --chdir bench -w 2 -k sync 'plain_flask:create_app()' with BENCH_MODEL=<model.onnx>.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Flask, Response, request

from detserve.inference.standalone import local_detector


def create_app() -> Flask:
    detector = local_detector(Path(os.environ["BENCH_MODEL"]).read_bytes(), threads=1)
    app = Flask(__name__)

    @app.post("/predict")
    def predict() -> Response:
        data = request.files["images"].read()
        return Response(json.dumps(detector.infer(data).to_dict()), mimetype="application/json")

    return app
