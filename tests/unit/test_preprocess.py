"""The model's input tensor: colour order, layout, dtype and normalisation, set once per model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detserve.processing.preprocess import TensorSpec, resize


@pytest.mark.parametrize("spec", [
    {},
    {"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]},
    {"color": "BGR", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    {"layout": "NHWC", "scale": 1.0, "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]},
    {"mean": [0.5, 0.25, 0.125]},  # a mean alone divides by ones
    {"std": [2.0, 4.0, 8.0]},
])
def test_float_input_is_the_plain_formula(spec):
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    arr = pixels[..., ::-1] if spec.get("color") == "BGR" else pixels
    want = (arr.astype(np.float64) * spec.get("scale", 1 / 255) - np.asarray(spec.get("mean", [0] * 3))) \
        / np.asarray(spec.get("std", [1] * 3))
    if spec.get("layout", "NCHW") == "NCHW":
        want = want.transpose(2, 0, 1)
    got = TensorSpec.from_spec(spec)(pixels)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(got, want[None], rtol=1e-6, atol=1e-6)


def test_uint8_input_is_the_pixels_reordered():
    pixels = np.random.default_rng(1).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    got = TensorSpec.from_spec({"dtype": "uint8", "color": "BGR"})(pixels)
    assert got.dtype == np.uint8 and got.shape == (1, 3, 8, 6)
    np.testing.assert_array_equal(got[0], pixels[..., ::-1].transpose(2, 0, 1))


def test_a_sliver_keeps_at_least_one_pixel_each_way():
    for size, into in [((1, 900), (8, 8)), ((900, 1), (8, 8)), ((3000, 2), (16, 32))]:
        pixels, geo = resize(Image.new("RGB", size, (200, 10, 10)), into, "letterbox")
        assert pixels.shape == (*into, 3)
        assert round(size[0] * geo.gain_x) >= 1 and round(size[1] * geo.gain_y) >= 1
        assert (pixels == (200, 10, 10)).all(axis=2).sum() >= 1


def test_the_default_tensor_is_rgb_float_in_0_1_nchw():
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 51, 0)
    out = TensorSpec.from_spec({})(pixels)
    assert out.shape == (1, 3, 2, 3) and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.allclose(out[0, :, 0, 0], [1.0, 0.2, 0.0], atol=1e-6)
    nhwc = TensorSpec.from_spec({"dtype": "uint8", "layout": "NHWC"})(pixels)
    assert nhwc[0, 0, 0].tolist() == [255, 51, 0]


def test_mean_and_std_apply_per_channel_whatever_their_values():
    pixels = np.full((1, 1, 3), 255, dtype=np.uint8)
    for mean, std in [([0.5, 0.5, 0.5], [2.0, 2.0, 2.0]), ([0.0, 0.25, 1.0], [0.5, 0.25, 4.0]),
                      ([0.1, 0.2, 0.3], [1.0, 1.0, 1.0])]:
        out = TensorSpec.from_spec({"mean": mean, "std": std})(pixels)[0, :, 0, 0]
        assert np.allclose(out, (1.0 - np.asarray(mean)) / np.asarray(std), atol=1e-6), (mean, std)
