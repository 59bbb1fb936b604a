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

from detserve import allocator
from detserve.backends.onnxruntime import OnnxRuntimeBackend
from detserve.inference import Detector, Limits
from detserve.packages import read_package


def in_process_detector(model: bytes, threads: int) -> Detector:
    """detserve's own pipeline on ONNX Runtime, outside any server (the bench's ceiling too)."""
    package = read_package(model, None, max_bytes=1 << 30)
    spec = {"input": package.input, "output": package.output}
    detector = Detector(OnnxRuntimeBackend.from_package(package.onnx_bytes, spec, threads=threads),
                        {"labels": package.labels, **spec}, Limits(1 << 30, 1 << 30))
    detector.warm_up()
    return detector


def create_app() -> Flask:
    allocator.tune()  # as detserve's processes do: the comparison is of the architecture alone
    detector = in_process_detector(Path(os.environ["BENCH_MODEL"]).read_bytes(), threads=1)
    app = Flask(__name__)

    @app.post("/predict")
    def predict() -> Response:
        data = request.files["images"].read()
        return Response(json.dumps(detector.infer(data).to_dict()), mimetype="application/json")

    return app
