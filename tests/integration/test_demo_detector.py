"""The trained demo detector, through HTTP and a real worker, finds the objects of generated
scenes: right class, IoU >= 0.5, boxes in original-image pixels, EXIF rotation included."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from api_helpers import predict, running_service
from detserve.inference.synthetic import CLASSES, iou, scene
from detserve.service.demo import demo_model_bytes


@pytest.fixture(scope="module")
def demo(stack):
    return running_service(stack.app.test_client(), "demo-trained", demo_model_bytes())


def check(body, truth_boxes, truth_classes):
    boxes = np.asarray(body["detection_boxes"], dtype=np.float32).reshape(-1, 4)[:, [1, 0, 3, 2]]
    assert len(boxes) >= len(truth_boxes)
    overlaps = iou(truth_boxes, boxes)
    for i, cls in enumerate(truth_classes):
        j = int(np.argmax(overlaps[i]))
        assert overlaps[i, j] >= 0.5, (i, overlaps[i])
        assert body["detection_classes"][j] == CLASSES[cls]


@pytest.mark.parametrize("seed,size,fmt", [(11, (320, 320), "PNG"), (12, (640, 480), "JPEG"),
                                           (13, (300, 500), "BMP"), (14, (1200, 900), "JPEG")])
def test_finds_the_objects_in_original_pixels(client, demo, seed, size, fmt):
    s = scene(seed, *size, min_size=max(18, size[0] // 16), max_size=max(110, size[0] // 3))
    body = predict(client, demo["id"], s.encode(fmt), filename=f"scene.{fmt.lower()}").json
    check(body, s.boxes, s.classes)


def test_exif_rotated_photo(client, demo):
    # the person sees scene 21 (480x320); the file stores it turned, with EXIF orientation 8
    s = scene(21, 480, 320)
    stored = s.image.transpose(Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 8
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif)
    body = predict(client, demo["id"], buf.getvalue(), filename="phone.jpg").json
    check(body, s.boxes, s.classes)
