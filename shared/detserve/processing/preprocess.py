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


def resize(pixels: np.ndarray, size: tuple[int, int], mode: str) -> tuple[np.ndarray, Geometry]:
    """Fit HxWx3 pixels into `size` (h, w): letterbox keeps the aspect ratio, stretch does not."""
    in_h, in_w = size
    h, w = pixels.shape[:2]
    if mode == "stretch":
        out = np.asarray(Image.fromarray(pixels).resize((in_w, in_h), Image.BILINEAR))
        return out, Geometry(in_w / w, in_h / h, 0.0, 0.0)
    gain = min(in_h / h, in_w / w)
    new_w, new_h = max(1, round(w * gain)), max(1, round(h * gain))
    resized = pixels if (new_w, new_h) == (w, h) else np.asarray(
        Image.fromarray(pixels).resize((new_w, new_h), Image.BILINEAR)
    )
    pad_x, pad_y = (in_w - new_w) // 2, (in_h - new_h) // 2
    canvas = np.full((in_h, in_w, 3), 114, dtype=np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return canvas, Geometry(new_w / w, new_h / h, float(pad_x), float(pad_y))


def to_tensor(pixels: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """HxWx3 uint8 RGB to a batch of one in the model's colour order, scale, layout and dtype."""
    arr = pixels[..., ::-1] if spec.get("color", "RGB") == "BGR" else pixels
    if spec.get("dtype", "float32") == "uint8":
        out = np.ascontiguousarray(arr)
    else:
        out = arr.astype(np.float32) * np.float32(spec.get("scale", 1 / 255))
        mean, std = spec.get("mean"), spec.get("std")
        if mean and any(mean):
            out -= np.asarray(mean, dtype=np.float32)
        if std and any(s != 1 for s in std):
            out /= np.asarray(std, dtype=np.float32)
    if spec.get("layout", "NCHW") == "NCHW":
        out = out.transpose(2, 0, 1)
    return np.ascontiguousarray(out[None])
