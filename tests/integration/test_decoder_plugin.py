"""A third-party decoder, installed as a tiny package (a module and its dist-info with the
`detserve.decoders` entry point) in a temporary directory on the path of the API and of a real
worker process, is used by a version that names it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from api_helpers import AUTH, predict, upload, wait_status
from conftest import Stack, make_settings
from detserve.processing import decoders
from support import constant_model, image_bytes

PLUGIN = '''
import numpy as np


class Corners:
    """Rows of x1, y1, x2, y2, score (one class), in units of `unit` input pixels."""

    nms = False

    def match(self, outputs, num_classes, options):
        name, shape = outputs[0]
        if len(shape) != 3 or shape[2] != 5:
            raise ValueError("corners wants one [1, N, 5] output")
        return {"outputs": [name], "unit": float(options.get("unit", 1)), "num_classes": 1}

    def decode(self, raw, spec, input_hw, threshold):
        rows = np.asarray(raw[0])[0]
        rows = rows[rows[:, 4] >= threshold]
        return rows[:, :4] * spec["unit"], rows[:, 4], np.zeros(len(rows), dtype=np.int64)
'''


def install_plugin(root: Path) -> None:
    (root / "corners_head.py").write_text(PLUGIN)
    info = root / "corners_head-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: corners-head\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[detserve.decoders]\ncorners = corners_head:Corners\n"
        "broken = corners_head:Missing\n")  # a broken one is left out, the others still load


@pytest.fixture(scope="module")
def plugin_stack(tmp_path_factory: pytest.TempPathFactory, redis_base: str) -> Iterator[Stack]:
    site = tmp_path_factory.mktemp("site")
    install_plugin(site)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *([saved] if saved else [])])
    sys.path.insert(0, str(site))
    decoders.available.cache_clear()
    try:
        stack = Stack(make_settings(tmp_path_factory.mktemp("plugin"), redis_base))
        yield stack
        stack.close()
    finally:
        sys.path.remove(str(site))
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
        decoders.available.cache_clear()


def test_not_installed_is_unknown(client):
    assert "corners" not in decoders.available()
    out = np.zeros((1, 3, 5), np.float32)
    resp = upload(client, "corners", constant_model(out),
                  config=json.dumps({"output": {"decoder": "corners"}}))
    assert resp.status_code == 400 and "corners" in json.dumps(resp.json), resp.json


def test_third_party_decoder_by_entry_point(plugin_stack):
    assert "corners" in decoders.available() and "corners" not in {"yolo", "boxes", "centerface", "picodet"}
    assert "broken" not in decoders.available()
    client = plugin_stack.app.test_client()
    out = np.asarray([[[1, 2, 3, 4, 0.9], [0, 0, 8, 8, 0.6], [0, 0, 1, 1, 0.1]]], np.float32)
    config = {"labels": ["thing"], "output": {"decoder": "corners", "options": {"unit": 4}}}
    resp = upload(client, "corners", constant_model(out), config=json.dumps(config))
    assert resp.status_code == 201, resp.json
    assert resp.json["output"]["decoder"] == "corners" and resp.json["output"]["unit"] == 4
    created = client.post("/v1/services", json={"model": "corners", "version": resp.json["version"],
                                                "flavor": "cpu"}, headers=AUTH)
    assert created.status_code == 202, created.json
    wait_status(client, created.json["id"], "Running")
    body = predict(client, created.json["id"], image_bytes(64, 64)).json
    assert body["detection_classes"] == ["thing", "thing"]
    assert body["detection_scores"] == pytest.approx([0.9, 0.6])
    assert np.allclose(body["detection_boxes"], [[8, 4, 16, 12], [0, 0, 32, 32]], atol=0.01)
