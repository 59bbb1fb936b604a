"""Boxes land on the original image's pixels, whatever the decoder did to get there: a model whose
boxes are known, run on photos large enough that JPEG draft decoding kicks in."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from detserve.inference.standalone import local_detector
from detserve.inference.synthetic import CLASSES, iou, scene
from detserve.processing.image import decode
from detserve.service.demo import demo_model_bytes
from support import constant_model, yolo_v8_output

SIZE = 64
META = {"names": "{0: 'near', 1: 'far'}", "imgsz": f"[{SIZE}, {SIZE}]"}
# two boxes in model-input pixels (centre x, centre y, width, height)
KNOWN = [(16.0, 16.0, 16.0, 16.0), (40.0, 40.0, 8.0, 16.0)]


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def expected(width: int, height: int) -> list[list[float]]:
    """Where KNOWN lands on a width x height image letterboxed into SIZE x SIZE (to within the
    rounding of the resized size, which the tolerance below allows for)."""
    gain = min(SIZE / width, SIZE / height)
    pad_x = (SIZE - round(width * gain)) // 2
    pad_y = (SIZE - round(height * gain)) // 2
    out = []
    for cx, cy, w, h in KNOWN:
        x1, x2 = (cx - w / 2 - pad_x) / gain, (cx + w / 2 - pad_x) / gain
        y1, y2 = (cy - h / 2 - pad_y) / gain, (cy + h / 2 - pad_y) / gain
        out.append([max(0, y1), max(0, x1), min(height, y2), min(width, x2)])
    return out


@pytest.fixture(scope="module")
def known_detector():
    model = constant_model(yolo_v8_output(KNOWN, [0, 1], [0.9, 0.8], nc=2), size=SIZE, meta=META)
    return local_detector(model, threads=1)


@pytest.mark.parametrize("width,height,drafted", [(1600, 1600, True), (1600, 1200, True),
                                                  (1200, 1700, True), (300, 200, False)])
def test_known_boxes_come_back_in_original_pixels(known_detector, width, height, drafted):
    data = jpeg(width, height)
    # the case under test: libjpeg decodes the large photos at a reduced scale
    assert (decode(data, max_bytes=1 << 30, max_pixels=1 << 30, target=SIZE).scale > 1) == drafted
    found = known_detector.infer(data)
    assert found.classes == ["near", "far"]
    assert np.asarray(found.boxes) == pytest.approx(np.asarray(expected(width, height)), rel=0.02, abs=1.0)


@pytest.mark.parametrize("seed", [31, 32])
def test_demo_detector_on_a_large_photo_matches_the_truth(seed):
    # a 1600x1600 JPEG decodes at 1/2 scale for a 320-pixel model; its boxes must not shrink
    detector = local_detector(demo_model_bytes(), threads=1)
    truth = scene(seed, 1600, 1600, min_size=100, max_size=530)
    found = detector.infer(truth.encode("JPEG"))
    boxes = np.asarray(found.boxes, dtype=np.float32).reshape(-1, 4)[:, [1, 0, 3, 2]]
    overlaps = iou(truth.boxes, boxes)
    for i, cls in enumerate(truth.classes):
        j = int(np.argmax(overlaps[i]))
        assert overlaps[i, j] >= 0.5, (i, overlaps[i])
        assert found.classes[j] == CLASSES[cls]
