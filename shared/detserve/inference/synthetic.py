"""Synthetic detection scenes: shapes of several classes, colours and sizes on cluttered
backgrounds, with their true boxes. The demo detector is trained and evaluated on these, and the
tests use them as images with known objects. Seeded: the same seed gives the same scene."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    boxes: np.ndarray  # (K, 4) x1, y1, x2, y2 in pixels
    classes: np.ndarray  # (K,) index into CLASSES

    def encode(self, fmt: str = "PNG") -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        return buf.getvalue()


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    base = rng.integers(0, 256, 3)
    other = rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    grad = base[None, None] * (1 - t) + other[None, None] * t
    arr = np.broadcast_to(grad, (h, w, 3)) + rng.normal(0, rng.uniform(3, 25), (h, w, 3))
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 15)):  # clutter: lines and thin arcs that are not objects
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, max(w, h), 4))
        if rng.random() < 0.6:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
        else:
            box = [min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1]
            draw.arc(box, int(rng.integers(0, 360)), int(rng.integers(0, 360)), fill=colour, width=2)
    return img


def _contrasting(rng: np.random.Generator, img: Image.Image, box: list[int]) -> tuple[int, int, int]:
    patch = np.asarray(img.crop((box[0], box[1], box[2], box[3]))).reshape(-1, 3).mean(axis=0)
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - patch).sum() > 150:
            break
    return tuple(int(c) for c in colour)  # type: ignore[return-value]


def _draw(draw: ImageDraw.ImageDraw, cls: int, box: list[int], colour: tuple[int, int, int],
          rng: np.random.Generator) -> list[float]:
    x0, y0, x1, y1 = box
    if cls == 0:
        draw.ellipse(box, fill=colour)
        return [x0, y0, x1, y1]
    if cls == 1:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
        return [x0, y0, x1, y1]
    # an upright-ish triangle, rotated a little; its box is the polygon's extent
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    turn = rng.uniform(-0.3, 0.3)
    pts = [(cx + r * math.sin(turn + k * 2 * math.pi / 3), cy - r * math.cos(turn + k * 2 * math.pi / 3))
           for k in range(3)]
    draw.polygon(pts, fill=colour)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [min(xs), min(ys), max(xs) + 1, max(ys) + 1]


def scene(seed: int, width: int = 320, height: int = 320, max_objects: int = 6,
          min_size: int = 18, max_size: int = 110) -> Scene:
    """One scene; objects do not overlap much, so every box is plainly visible."""
    rng = np.random.default_rng(seed)
    img = _background(rng, width, height)
    draw = ImageDraw.Draw(img)
    boxes: list[list[float]] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1)) * 4):
        if len(boxes) >= max_objects:
            break
        size = int(rng.integers(min_size, min(max_size, width, height) + 1))
        x0, y0 = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
        box = [x0, y0, x0 + size, y0 + size]
        if any(_overlap([x0 - 4, y0 - 4, x0 + size + 4, y0 + size + 4], b) > 0 for b in boxes):
            continue
        cls = int(rng.integers(0, len(CLASSES)))
        boxes.append(_draw(draw, cls, box, _contrasting(rng, img, box), rng))
        classes.append(cls)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return Scene(img, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(classes, dtype=np.int64))


def _overlap(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller else 0.0


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N,4) and (M,4) x1,y1,x2,y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def average_precision(detections: list[tuple[int, float, bool]], positives: int) -> float:
    """All-point interpolated AP from (image, score, is_true_positive) rows of one class."""
    if positives == 0:
        return float("nan")
    rows = sorted(detections, key=lambda r: -r[1])
    tp = np.cumsum([r[2] for r in rows], dtype=np.float64)
    fp = np.cumsum([not r[2] for r in rows], dtype=np.float64)
    recall = np.concatenate([[0.0], tp / positives, [1.0]])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1e-9), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    changes = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[changes + 1] - recall[changes]) * precision[changes + 1]))
