"""A PP-PicoDet head (exported without NMS): per level, class scores [1, N, classes] (after the
sigmoid) and distribution-focal box regressions [1, N, 4 x (reg_max + 1)], whose integral (the
softmax-weighted mean of 0..reg_max) is the left, top, right, bottom distance in strides from the
cell centre.

Options: `strides` (default [8, 16, 32, 64], finest level first), `reg_max` (default: from the
regression width). Levels pair up by their anchor count N, the most anchors first; at upload, the
level of stride s must have ceil(H/s) x ceil(W/s) anchors for the model's H x W input (the grid
decode lays them on), or the upload is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from detserve.processing.decoders import Decoded, Shape, describe


class PicoDet:
    nms = True

    def match(self, outputs: Sequence[tuple[str, Shape]], num_classes: int | None,
              options: dict[str, Any]) -> dict[str, Any]:
        unknown = set(options) - {"strides", "reg_max"}
        if unknown:
            raise ValueError(f"unknown picodet options {sorted(unknown)}: use strides, reg_max")
        strides = options.get("strides", [8, 16, 32, 64])
        if not (isinstance(strides, list) and strides
                and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in strides)):
            raise ValueError("picodet option strides is a list of positive integers")
        expected = ("the picodet decoder expects, per level, a [1, N, classes] score output and a "
                    "[1, N, 4 x (reg_max+1)] regression output")
        levels: dict[int, list[tuple[str, int]]] = {}
        for name, shape in outputs:
            if len(shape) == 3 and isinstance(shape[1], int) and isinstance(shape[2], int):
                levels.setdefault(shape[1], []).append((name, shape[2]))
        if not levels or any(len(pair) != 2 for pair in levels.values()) \
                or len(levels) != len(strides):
            raise ValueError(f"{expected}, {len(strides)} levels (option strides); the model's "
                             f"outputs are {describe(outputs)}")
        names: list[str] = []
        widths: set[tuple[int, int]] = set()
        for n in sorted(levels, reverse=True):
            (a, wa), (b, wb) = levels[n]
            if num_classes is not None and num_classes not in (wa, wb):
                raise ValueError(f"{expected}; no output of {n} anchors has {num_classes} "
                                 f"classes (the labels): {describe(outputs)}")
            # the scores are the output with `classes` channels, or else the one listed first
            scores_first = wa == num_classes if num_classes is not None else True
            (cls, nc), (reg, width) = ((a, wa), (b, wb)) if scores_first else ((b, wb), (a, wa))
            names += [cls, reg]
            widths.add((nc, width))
        if len(widths) != 1:
            raise ValueError(f"{expected}, the same widths on every level; the model's outputs "
                             f"are {describe(outputs)}")
        nc, width = widths.pop()
        reg_max = options.get("reg_max", width // 4 - 1)
        if width % 4 or width != 4 * (reg_max + 1) or reg_max < 1:
            raise ValueError(f"{expected}; the regression width {width} is not 4 x (reg_max+1) "
                             f"with reg_max {reg_max}")
        return {"outputs": names, "strides": strides, "reg_max": reg_max, "num_classes": nc}

    def check_input(self, outputs: Sequence[tuple[str, Shape]], spec: dict[str, Any],
                    input_hw: tuple[int, int]) -> None:
        """Each level's anchors are the grid decode lays on the input at its stride; other counts
        would put every box in the wrong cell, so they are refused here."""
        h, w = input_hw
        expected = [math.ceil(h / s) * math.ceil(w / s) for s in spec["strides"]]
        shapes = dict(outputs)
        found = [shapes[name][1] for name in spec["outputs"][::2]]  # the scores of each level
        if found != expected:
            grids = ", ".join(f"{math.ceil(h / s)}x{math.ceil(w / s)}={n} at stride {s}"
                              for s, n in zip(spec["strides"], expected, strict=True))
            raise ValueError(
                f"the picodet decoder expects, for a {h}x{w} input and strides {spec['strides']}, "
                f"{expected} anchors per level ({grids}); the model's outputs have {found}: set "
                "input.size to the size the model was exported for, or the option strides to its "
                "strides")

    def decode(self, raw: Sequence[np.ndarray], spec: dict[str, Any], input_hw: tuple[int, int],
               threshold: float) -> Decoded:
        h, w = input_hw
        bins = np.arange(int(spec["reg_max"]) + 1, dtype=np.float32)
        found: list[Decoded] = []
        for level, stride in enumerate(spec["strides"]):
            scores = np.asarray(raw[2 * level])[0]  # (N, classes)
            regs = np.asarray(raw[2 * level + 1])[0]  # (N, 4 x bins)
            best = scores.max(axis=1)
            keep = np.flatnonzero(best >= threshold)
            cols = math.ceil(w / stride)
            cx = (keep % cols + 0.5) * stride
            cy = (keep // cols + 0.5) * stride
            logits = regs[keep].reshape(len(keep), 4, len(bins))
            weights = np.exp(logits - logits.max(axis=2, keepdims=True))
            dist = (weights * bins).sum(axis=2) / weights.sum(axis=2) * stride  # l, t, r, b
            boxes = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]],
                             axis=1)
            found.append((boxes.astype(np.float32), best[keep], scores[keep].argmax(axis=1)))
        return (np.concatenate([f[0] for f in found]).reshape(-1, 4),
                np.concatenate([f[1] for f in found]), np.concatenate([f[2] for f in found]))
