"""Known outputs of the CenterFace and PP-PicoDet heads (for the unit and HTTP tests)."""

from __future__ import annotations

import numpy as np


def centerface_outputs() -> dict[str, np.ndarray]:
    """Maps at stride 4 for a 64x64 input: a face 12 wide and 16 high centred at (36, 23), a
    weaker one overlapping it (suppressed), a small 4x4 one, and a peak under the threshold."""
    heat, scale, offset = (np.zeros((1, c, 16, 16), np.float32) for c in (1, 2, 2))
    for (row, col), score, (h, w), (oy, ox) in [((5, 8), 0.9, (16, 12), (0.25, 0.5)),
                                                 ((5, 9), 0.6, (16, 12), (0.25, 0.5)),
                                                 ((12, 2), 0.5, (4, 4), (0.0, 0.0)),
                                                 ((0, 0), 0.2, (8, 8), (0.0, 0.0))]:
        heat[0, 0, row, col] = score
        scale[0, :, row, col] = np.log([h / 4, w / 4])
        offset[0, :, row, col] = [oy, ox]
    return {"heatmap": heat, "scale": scale, "offset": offset,
            "landmarks": np.zeros((1, 10, 16, 16), np.float32)}


def picodet_outputs() -> list[tuple[str, np.ndarray]]:
    """Scores then regressions of 4 levels (strides 8..64) for a 64x64 input, 2 classes, reg_max 7:
    one box from the stride-8 level, one from the stride-32 level, one score under threshold."""
    counts = [64, 16, 4, 1]
    scores = [np.zeros((1, n, 2), np.float32) for n in counts]
    regs = [np.zeros((1, n, 32), np.float32) for n in counts]

    def sides(level: int, index: int, bins: list[list[int]]) -> None:
        logits = regs[level][0, index].reshape(4, 8)
        for side, hot in enumerate(bins):  # equal logits on several bins: their mean
            logits[side, hot] = 20.0

    scores[0][0, 9, 1] = 0.8  # row 1, col 1 of 8: centre (12, 12)
    sides(0, 9, [[1, 2], [1], [2], [3]])  # l 1.5, t 1, r 2, b 3 strides of 8
    scores[2][0, 3, 0] = 0.7  # row 1, col 1 of 2: centre (48, 48)
    sides(2, 3, [[0, 1]] * 4)  # 0.5 strides of 32 on every side
    scores[1][0, 0, 0] = 0.1
    return ([(f"scores{i}", s) for i, s in enumerate(scores)]
            + [(f"boxes{i}", r) for i, r in enumerate(regs)])
