"""Resizing and the input tensor at their edges (the property tests cover the common cases)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from detserve.processing.preprocess import resize, to_tensor


def test_a_sliver_keeps_at_least_one_pixel_each_way():
    for size, into in [((1, 900), (8, 8)), ((900, 1), (8, 8)), ((3000, 2), (16, 32))]:
        pixels, geo = resize(Image.new("RGB", size, (200, 10, 10)), into, "letterbox")
        assert pixels.shape == (*into, 3)
        assert round(size[0] * geo.gain_x) >= 1 and round(size[1] * geo.gain_y) >= 1
        assert (pixels == (200, 10, 10)).all(axis=2).sum() >= 1


def test_the_default_tensor_is_rgb_float_in_0_1_nchw():
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 51, 0)
    out = to_tensor(pixels, {})
    assert out.shape == (1, 3, 2, 3) and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.allclose(out[0, :, 0, 0], [1.0, 0.2, 0.0], atol=1e-6)
    assert to_tensor(pixels, {"dtype": "uint8", "layout": "NHWC"})[0, 0, 0].tolist() == [255, 51, 0]
