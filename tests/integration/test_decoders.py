"""Known-output models of each layout decode to the expected boxes, through HTTP and a worker."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto

from api_helpers import AUTH, predict, upload
from heads_data import centerface_outputs, picodet_outputs
from support import constant_model, image_bytes, yolo_v8_output


def _service(client, name, model, config=None):
    resp = upload(client, name, model, config=json.dumps(config) if config else None)
    assert resp.status_code == 201, resp.json
    created = client.post("/v1/services", json={"model": name, "version": resp.json["version"],
                                                "flavor": "cpu"}, headers=AUTH)
    assert created.status_code == 202, created.json
    from api_helpers import wait_status

    wait_status(client, created.json["id"], "Running")
    return resp.json, created.json


def test_yolo_v8_layout_with_nms_and_letterbox(client):
    # given a 64x64 model: box A (cls 0, .9), a weaker duplicate of A (suppressed), the same box as
    # class 1 (kept: NMS is per class), and one under the threshold
    out = yolo_v8_output([(32, 32, 20, 20), (33, 32, 20, 20), (32, 32, 20, 20), (10, 10, 4, 4)],
                         [0, 0, 1, 0], [0.9, 0.8, 0.6, 0.1], nc=2)
    meta = {"names": "{0: 'cat', 1: 'dog'}", "imgsz": "[64, 64]"}
    version, svc = _service(client, "v8", constant_model(out, meta=meta))
    assert version["labels"] == ["cat", "dog"] and version["output"]["layout"] == "v8"
    # when a 128x96 image is sent (letterbox gain 0.5, 8 px of vertical padding)
    resp = predict(client, svc["id"], image_bytes(128, 96))
    # then boxes come back in image pixels, by score
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["detection_classes"] == ["cat", "dog"]
    assert body["detection_scores"] == pytest.approx([0.9, 0.6])
    assert np.allclose(body["detection_boxes"], [[28, 44, 68, 84], [28, 44, 68, 84]], atol=0.01)


def test_yolo_v5_layout_with_objectness(client):
    out = np.zeros((1, 20, 7), dtype=np.float32)
    out[0, 0] = [16, 16, 8, 8, 0.9, 0.1, 0.8]  # score 0.72, class 1
    out[0, 1] = [40, 40, 16, 8, 0.5, 0.9, 0.1]  # score 0.45, class 0
    out[0, 2] = [40, 40, 16, 8, 0.2, 0.9, 0.1]  # objectness below threshold
    _, svc = _service(client, "v5", constant_model(out), {"labels": ["a", "b"]})
    body = predict(client, svc["id"], image_bytes(64, 64)).json
    assert body["detection_classes"] == ["b", "a"]
    assert body["detection_scores"] == pytest.approx([0.72, 0.45], abs=1e-5)
    assert np.allclose(body["detection_boxes"], [[12, 12, 20, 20], [36, 32, 44, 48]], atol=0.01)


def test_tfod_boxes_layout_uint8_nhwc_stretch(client):
    boxes = np.zeros((1, 5, 4), dtype=np.float32)
    boxes[0, 0] = [0.1, 0.2, 0.5, 0.6]
    boxes[0, 1] = [0.0, 0.0, 1.0, 1.0]
    scores = np.asarray([[0.95, 0.3, 0.9, 0.0, 0.0]], dtype=np.float32)
    classes = np.asarray([[2, 1, 1, 0, 0]], dtype=np.float32)
    model = constant_model(boxes, out_name="detection_boxes", input_dtype=TensorProto.UINT8,
                           layout="NHWC", extra_outputs={"detection_scores": scores,
                                                          "detection_classes": classes,
                                                          "num_detections": np.asarray([2.0])})
    config = {"labels": ["background", "person", "car"], "input": {"resize": "stretch"},
              "output": {"decoder": "boxes"}}
    version, svc = _service(client, "tfod", model, config)
    assert version["input"]["layout"] == "NHWC" and version["input"]["dtype"] == "uint8"
    body = predict(client, svc["id"], image_bytes(200, 100)).json
    # num_detections = 2 hides the third row even though its score is high
    assert body["detection_classes"] == ["car", "person"]
    assert np.allclose(body["detection_boxes"], [[10, 40, 50, 120], [0, 0, 100, 200]], atol=0.01)


def test_end_to_end_n6_layout(client):
    out = np.asarray([[[4, 8, 20, 30, 0.7, 1], [0, 0, 64, 64, 0.2, 0]]], dtype=np.float32)
    _, svc = _service(client, "e2e", constant_model(out), {"labels": ["x", "y"],
                                                           "output": {"decoder": "boxes"}})
    body = predict(client, svc["id"], image_bytes(64, 64)).json
    assert body == {**body, "detection_classes": ["y"], "detection_scores": pytest.approx([0.7])}
    assert np.allclose(body["detection_boxes"], [[8, 4, 30, 20]])


def test_centerface_head(client):
    maps = centerface_outputs()
    model = constant_model(maps.pop("heatmap"), out_name="heatmap", extra_outputs=maps)
    version, svc = _service(client, "faces", model, {"labels": ["face"],
                                                     "output": {"decoder": "centerface"}})
    assert version["output"]["outputs"] == ["heatmap", "scale", "offset"]
    body = predict(client, svc["id"], image_bytes(64, 64)).json
    assert body["detection_classes"] == ["face", "face"]
    assert body["detection_scores"] == pytest.approx([0.9, 0.5])
    assert np.allclose(body["detection_boxes"], [[15, 30, 31, 42], [48, 8, 52, 12]], atol=0.01)


def test_picodet_head_with_integral_regression(client):
    (first, value), *rest = picodet_outputs()
    model = constant_model(value, out_name=first, extra_outputs=dict(rest))
    version, svc = _service(client, "pico", model, {"labels": ["a", "b"], "output": {
        "decoder": "picodet", "options": {"strides": [8, 16, 32, 64]}}})
    assert version["output"]["reg_max"] == 7
    body = predict(client, svc["id"], image_bytes(64, 64)).json
    assert body["detection_classes"] == ["b", "a"]
    assert body["detection_scores"] == pytest.approx([0.8, 0.7])
    assert np.allclose(body["detection_boxes"], [[4, 0, 36, 28], [32, 32, 64, 64]], atol=0.01)


@pytest.mark.parametrize("size,options,expected", [
    (96, {}, "[144, 36, 9, 4]"),  # outputs of a 64x64 export, in a 96x96 model
    (64, {"strides": [4, 8, 16, 32]}, "[256, 64, 16, 4]"),
])
def test_picodet_anchors_that_do_not_fit_the_input_are_400_at_upload(client, size, options,
                                                                      expected):
    (first, value), *rest = picodet_outputs()  # 64, 16, 4, 1 anchors
    model = constant_model(value, size=size, out_name=first, extra_outputs=dict(rest))
    resp = upload(client, "pico-misfit", model, config=json.dumps(
        {"labels": ["a", "b"], "output": {"decoder": "picodet", "options": options}}))
    assert resp.status_code == 400, resp.json
    err = resp.json["error"]
    assert err["code"] == "invalid_model" and "config" in err["fields"], err
    assert f"{size}x{size} input" in err["message"] and expected in err["message"], err
    assert "have [64, 16, 4, 1]" in err["message"], err


def test_unknown_decoder_is_400_naming_the_installed(client):
    out = np.asarray([[[4, 8, 20, 30, 0.7, 1]]], dtype=np.float32)
    resp = upload(client, "nodec", constant_model(out),
                  config=json.dumps({"output": {"decoder": "retinaface"}}))
    assert resp.status_code == 400, resp.json
    text = json.dumps(resp.json)
    assert "retinaface" in text and all(n in text for n in ("yolo", "boxes", "centerface", "picodet"))


def test_bad_decoder_options_are_400(client):
    maps = centerface_outputs()
    model = constant_model(maps.pop("heatmap"), out_name="heatmap", extra_outputs=maps)
    resp = upload(client, "badopt", model, config=json.dumps(
        {"output": {"decoder": "centerface", "options": {"stride": "four"}}}))
    assert resp.status_code == 400 and "stride" in json.dumps(resp.json), resp.json
