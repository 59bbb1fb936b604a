"""Resize (letterbox or stretch) and normalise to the model's input tensor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Geometry:
    """How input-tensor pixels map back to decoded-image pixels: x_img = (x_in - pad_x) / gain_x."""

    gain_x: float
    gain_y: float
    pad_x: float
    pad_y: float


# Downscaling by more than this factor first averages whole pixel blocks (Image.reduce), then
# resamples the rest: far cheaper than a wide bilinear filter over a large photo, as smooth.
REDUCING_GAP = 3.0


def resize(image: Image.Image | np.ndarray, size: tuple[int, int],
           mode: str) -> tuple[np.ndarray, Geometry]:
    """Fit an RGB image into `size` (h, w): letterbox keeps the aspect ratio, stretch does not.

    Only the small result becomes a numpy array; the full-size image is never copied.
    """
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    in_h, in_w = size
    w, h = img.size
    if mode == "stretch":
        out = img.resize((in_w, in_h), Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)
        return np.asarray(out), Geometry(in_w / w, in_h / h, 0.0, 0.0)
    gain = min(in_h / h, in_w / w)
    new_w, new_h = max(1, round(w * gain)), max(1, round(h * gain))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)
    pad_x, pad_y = (in_w - new_w) // 2, (in_h - new_h) // 2
    canvas = Image.new("RGB", (in_w, in_h), (114, 114, 114))
    canvas.paste(img, (pad_x, pad_y))
    return np.asarray(canvas), Geometry(new_w / w, new_h / h, float(pad_x), float(pad_y))


@dataclass(frozen=True)
class TensorSpec:
    """A model's input colour order, layout, dtype and normalisation, read once when it loads.

    (x * scale - mean) / std is folded into one multiply and, where a mean is set, one subtraction.
    """

    bgr: bool
    nchw: bool
    as_uint8: bool
    multiply: np.ndarray  # float32: a scalar, or one factor per channel in the output's layout
    subtract: np.ndarray | None  # float32 per channel, in the output's layout

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TensorSpec:
        nchw = spec.get("layout", "NCHW") == "NCHW"
        channels = (3, 1, 1) if nchw else (3,)
        scale = np.float32(spec.get("scale", 1 / 255))
        mean = np.asarray(spec.get("mean") or [0.0] * 3, dtype=np.float32)
        std = np.asarray(spec.get("std") or [1.0] * 3, dtype=np.float32)
        return cls(bgr=spec.get("color", "RGB") == "BGR", nchw=nchw,
                   as_uint8=spec.get("dtype", "float32") == "uint8",
                   multiply=np.asarray(scale if np.all(std == 1) else (scale / std).reshape(channels),
                                       dtype=np.float32),
                   subtract=(mean / std).reshape(channels) if np.any(mean) else None)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB to a batch of one in the model's input format."""
        arr = pixels[..., ::-1] if self.bgr else pixels
        # reorder while still uint8 (a quarter of the bytes), then one float array written once:
        # the float intermediates of cast-then-scale each cost a fresh large allocation
        arr = np.ascontiguousarray(arr.transpose(2, 0, 1) if self.nchw else arr)
        if self.as_uint8:
            return arr[None]
        out = np.empty((1, *arr.shape), dtype=np.float32)
        np.multiply(arr, self.multiply, out=out[0])
        if self.subtract is not None:
            out[0] -= self.subtract
        return out
