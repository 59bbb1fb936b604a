"""An anchor-free face head of the CenterFace kind: a face-centre heatmap, log-scale (height,
width) and centre-offset (y, x) maps, all at one stride (4); a landmark map, if any, is ignored.

Options: `stride` (default 4); `heatmap`, `scale`, `offset`, the output names where the order of
the model's outputs (the first 1-channel map, then the first two 2-channel maps) is not theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detserve.processing.decoders import Decoded, Shape, describe

ROLES = ("heatmap", "scale", "offset")


class CenterFace:
    nms = True

    def match(self, outputs: Sequence[tuple[str, Shape]], num_classes: int | None,
              options: dict[str, Any]) -> dict[str, Any]:
        unknown = set(options) - {"stride", *ROLES}
        if unknown:
            raise ValueError(f"unknown centerface options {sorted(unknown)}: use stride, "
                             "heatmap, scale, offset")
        stride = options.get("stride", 4)
        if not isinstance(stride, int) or isinstance(stride, bool) or not 1 <= stride <= 64:
            raise ValueError("centerface option stride is an integer 1..64")
        maps = {n: s for n, s in outputs if len(s) == 4}
        ones = [n for n, s in maps.items() if s[1] == 1]
        twos = [n for n, s in maps.items() if s[1] == 2]
        names = {"heatmap": ones[:1], "scale": twos[:1], "offset": twos[1:2]}
        chosen = [options.get(role) or (names[role][0] if names[role] else None) for role in ROLES]
        if not all(n in maps for n in chosen):
            raise ValueError(
                "the centerface decoder expects a [1, 1, H/4, W/4] heatmap and [1, 2, H/4, W/4] "
                "scale and offset maps (in that order, or named by the options heatmap, scale, "
                f"offset); the model's outputs are {describe(outputs)}")
        return {"outputs": chosen, "stride": stride, "num_classes": 1}

    def decode(self, raw: Sequence[np.ndarray], spec: dict[str, Any], input_hw: tuple[int, int],
               threshold: float) -> Decoded:
        heat, scale, offset = (np.asarray(r)[0] for r in raw[:3])
        stride = int(spec.get("stride", 4))
        rows, cols = np.nonzero(heat[0] >= threshold)
        size_h = np.exp(scale[0, rows, cols]) * stride
        size_w = np.exp(scale[1, rows, cols]) * stride
        cy = (rows + offset[0, rows, cols] + 0.5) * stride
        cx = (cols + offset[1, rows, cols] + 0.5) * stride
        h, w = input_hw
        x1 = np.clip(cx - size_w / 2, 0, w)
        y1 = np.clip(cy - size_h / 2, 0, h)
        boxes = np.stack([x1, y1, np.minimum(x1 + size_w, w), np.minimum(y1 + size_h, h)], axis=1)
        scores = heat[0, rows, cols]
        return boxes.astype(np.float32), scores.astype(np.float32), np.zeros(len(rows), np.int64)
