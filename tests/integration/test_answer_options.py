"""Per-request answer options through HTTP and a real worker, on both prediction routes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from api_helpers import AUTH, post_multipart, running_service, task_outcome
from support import constant_model, image_bytes, yolo_v8_output

LABELS = ["cat", "dog", "bird"]
# a 64x64 model with known outputs (centre x, centre y, w, h in input pixels); a 128x64 image
# fills input rows 16..48, so every box lies on the image
OUTPUT = yolo_v8_output(
    [(32, 32, 20, 20), (34, 32, 20, 20), (10, 36, 8, 4), (50, 24, 10, 10), (50, 40, 8, 8)],
    [0, 0, 1, 2, 0], [0.9, 0.7, 0.5, 0.3, 0.2], nc=3)
IMAGE = image_bytes(128, 64)
ROUTES = ("predict", "predictions")


@pytest.fixture(scope="module")
def service(stack):
    model = constant_model(OUTPUT, meta={"names": str(dict(enumerate(LABELS))),
                                         "imgsz": "[64, 64]"})
    return running_service(stack.app.test_client(), "answer-options", model)


def ask(client, service, route, form=None, query=""):
    """The answer's JSON (through the task's result for the async route) and its status."""
    fields = {"images": (io.BytesIO(IMAGE), "image.png"), **(form or {})}
    resp = post_multipart(client, f"/v1/services/{service['id']}/{route}{query}", fields, AUTH)
    if route == "predict" or resp.status_code != 202:
        return resp.status_code, resp.json
    seen = task_outcome(client, resp.json["task_id"])
    assert seen["status"] == "SUCCESS", seen
    return 200, seen["result"]


def pairs(body):
    return list(zip(body["detection_classes"], np.round(body["detection_scores"], 3).tolist(),
                    strict=True))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("form,expected", [
    ({}, [("cat", 0.9), ("dog", 0.5), ("bird", 0.3)]),
    ({"score_threshold": "0.4"}, [("cat", 0.9), ("dog", 0.5)]),
    ({"score_threshold": "0.1"}, [("cat", 0.9), ("dog", 0.5), ("bird", 0.3), ("cat", 0.2)]),
    ({"class_thresholds": '{"dog": 0.6}'}, [("cat", 0.9), ("bird", 0.3)]),
    ({"class_thresholds": '{"cat": 0.1}'}, [("cat", 0.9), ("dog", 0.5), ("bird", 0.3),
                                             ("cat", 0.2)]),
    ({"score_threshold": "0.6", "class_thresholds": '{"bird": 0.25}'},
     [("cat", 0.9), ("bird", 0.3)]),
    ({"iou_threshold": "0.9"}, [("cat", 0.9), ("cat", 0.7), ("dog", 0.5), ("bird", 0.3)]),
    ({"max_detections": "2"}, [("cat", 0.9), ("dog", 0.5)]),
    ({"classes": "dog,bird"}, [("dog", 0.5), ("bird", 0.3)]),
    ({"classes": '["bird"]'}, [("bird", 0.3)]),
    ({"classes": "cat", "score_threshold": "0.1", "max_detections": "1"}, [("cat", 0.9)]),
])
def test_each_option_changes_the_answer(client, service, route, form, expected):
    status, body = ask(client, service, route, form)
    assert status == 200, body
    assert pairs(body) == expected


def test_query_parameters_work_and_a_form_field_wins(client, service):
    status, body = ask(client, service, "predict", query="?score_threshold=0.4&classes=cat,dog")
    assert status == 200 and pairs(body) == [("cat", 0.9), ("dog", 0.5)]
    status, body = ask(client, service, "predict", {"score_threshold": "0.6"},
                       query="?score_threshold=0.1")
    assert status == 200 and pairs(body) == [("cat", 0.9)]


@pytest.mark.parametrize("route", ROUTES)
def test_box_formats(client, service, route):
    # given the default answer, [y_min, x_min, y_max, x_max] in pixels of the 128x64 image
    _, plain = ask(client, service, route)
    y1, x1, y2, x2 = np.asarray(plain["detection_boxes"]).T
    w, h = 128.0, 64.0
    expected = {
        "yxyx": np.stack([y1, x1, y2, x2], 1), "xyxy": np.stack([x1, y1, x2, y2], 1),
        "xywh": np.stack([x1, y1, x2 - x1, y2 - y1], 1),
        "yxyx_norm": np.stack([y1 / h, x1 / w, y2 / h, x2 / w], 1),
        "xyxy_norm": np.stack([x1 / w, y1 / h, x2 / w, y2 / h], 1),
        "xywh_norm": np.stack([x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h], 1),
    }
    # the dog's box, known from the model's output: input [6, 34, 14, 38] -> image x2, y-16 x2
    assert np.allclose(plain["detection_boxes"][1], [36, 12, 44, 28], atol=0.01)
    for box_format, boxes in expected.items():
        # when the same image is asked for in each format
        status, body = ask(client, service, route, {"box_format": box_format})
        # then the boxes are the same boxes, written that way
        assert status == 200, body
        assert body["detection_classes"] == plain["detection_classes"]
        assert np.allclose(body["detection_boxes"], boxes, atol=0.01), box_format


BAD = [
    ("score_threshold", "1.5"), ("score_threshold", "-0.1"), ("score_threshold", "high"),
    ("score_threshold", "nan"), ("iou_threshold", "2"), ("iou_threshold", "x"),
    ("max_detections", "0"), ("max_detections", "1001"), ("max_detections", "2.5"),
    ("max_detections", "-3"), ("class_thresholds", "0.5"), ("class_thresholds", "{bad json"),
    ("class_thresholds", '{"cat": 2}'), ("class_thresholds", '{"cat": "high"}'),
    ("class_thresholds", "{}"), ("classes", "cat,,dog"), ("classes", '["cat", 3]'),
    ("classes", "[oops"), ("box_format", "cxcywh"), ("box_format", "XYXY"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("field,value", BAD)
def test_bad_values_are_400_naming_the_field(client, service, route, field, value):
    status, body = ask(client, service, route, {field: value})
    assert status == 400, body
    err = body["error"]
    assert err["code"] == "validation_error"
    assert list(err["fields"]) == [field] and field in err["message"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("field,value", [("classes", "cat,unicorn"),
                                         ("class_thresholds", '{"unicorn": 0.5}')])
def test_unknown_class_names_are_400_listing_the_labels(client, service, route, field, value):
    status, body = ask(client, service, route, {field: value})
    assert status == 400, body
    err = body["error"]
    assert list(err["fields"]) == [field]
    assert "unicorn" in err["message"] and json.dumps(LABELS).replace('"', "'") in err["message"]


def test_a_bad_option_queues_nothing(client, service, stack):
    import redis

    r = redis.Redis.from_url(stack.settings.redis_url)
    before = set(r.scan_iter("detserve:image:*"))
    status, _ = ask(client, service, "predictions", {"max_detections": "0"})
    assert status == 400
    assert set(r.scan_iter("detserve:image:*")) == before
