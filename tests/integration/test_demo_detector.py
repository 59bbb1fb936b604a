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
from support import stored_for_exif


@pytest.fixture(scope="module")
def demo(stack):
    return running_service(stack.app.test_client(), "demo-trained", demo_model_bytes())


def check(body, truth_boxes, truth_classes):
    """Every true object found once (IoU >= 0.5, right class), no duplicates, and at most one
    stray box, of low score."""
    boxes = np.asarray(body["detection_boxes"], dtype=np.float32).reshape(-1, 4)[:, [1, 0, 3, 2]]
    overlaps = iou(truth_boxes, boxes)
    for i, cls in enumerate(truth_classes):
        hits = np.nonzero(overlaps[i] >= 0.5)[0]
        assert len(hits) == 1, (i, overlaps[i])  # found, and found once
        assert body["detection_classes"][hits[0]] == CLASSES[cls]
    stray = [j for j in range(len(boxes)) if overlaps[:, j].max(initial=0.0) < 0.5]
    assert len(stray) <= 1 and all(body["detection_scores"][j] < 0.5 for j in stray), stray


@pytest.mark.parametrize("seed,size,fmt", [(11, (320, 320), "PNG"), (12, (640, 480), "JPEG"),
                                           (13, (300, 500), "BMP"), (14, (1200, 900), "JPEG"),
                                           (15, (1600, 1600), "JPEG")])  # decoded at 1/2 scale
def test_finds_the_objects_in_original_pixels(client, demo, seed, size, fmt):
    s = scene(seed, *size, min_size=max(18, size[0] // 16), max_size=max(110, size[0] // 3))
    body = predict(client, demo["id"], s.encode(fmt), filename=f"scene.{fmt.lower()}").json
    check(body, s.boxes, s.classes)


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_exif_rotated_photo(client, demo, orientation):
    # the person sees scene 21 (480x320); the file stores it turned or mirrored, with EXIF
    s = scene(21, 480, 320)
    stored = Image.fromarray(np.ascontiguousarray(stored_for_exif(np.asarray(s.image), orientation)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif)
    body = predict(client, demo["id"], buf.getvalue(), filename="phone.jpg").json
    check(body, s.boxes, s.classes)
