"""The floor `make bench` compares detserve with: a plain Flask app running the independent
reference pipeline (bench/reference.py) in its own process, under gunicorn with 2 sync workers.
No queue, no auth, no checks before decoding: what serving this pipeline over HTTP costs at least.

gunicorn --chdir bench -w 2 -k sync 'plain_flask:create_app()' with BENCH_MODEL=<model.onnx>
(and BENCH_LABELS, a JSON list, to answer with class names as detserve does).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Flask, Response, request

from reference import Reference, answer


def create_app() -> Flask:
    ref = Reference(Path(os.environ["BENCH_MODEL"]).read_bytes(), threads=1)
    labels = json.loads(os.environ.get("BENCH_LABELS", "[]"))
    app = Flask(__name__)

    @app.post("/predict")
    def predict() -> Response:
        result = ref(request.files["images"].read())
        return Response(json.dumps(answer(result, labels)), mimetype="application/json")

    return app
