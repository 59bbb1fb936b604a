"""Train the demo detector on synthetic scenes and export it to ONNX (dev-only; CI never runs it).

    pip install -e ".[train]"          # the CPU build of torch
    python tools/demo_detector/train.py --steps 3000 --out shared/detserve/models/demo-detector.onnx
    python tools/demo_detector/evaluate.py   # mAP@0.5 on a held-out synthetic set

Seeded: the same command gives the same weights on the same machine (torch's CPU kernels).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "shared"))
sys.path.insert(0, str(Path(__file__).parent))

from detserve.inference.synthetic import CLASSES, scene  # noqa: E402
from detserve.processing.preprocess import resize  # noqa: E402
from model import SIZE, STRIDE, DemoDetector  # noqa: E402

TRAIN_SEED_BASE = 1_000_000  # evaluation uses seeds below this; training never sees them


def sample(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scene of random size letterboxed to the model input, exactly as detserve serves it."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(224, 481)), int(rng.integers(224, 481))
    s = scene(seed, w, h)
    pixels, g = resize(np.asarray(s.image), (SIZE, SIZE), "letterbox")
    boxes = s.boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]] * g.gain_x + g.pad_x
    boxes[:, [1, 3]] = boxes[:, [1, 3]] * g.gain_y + g.pad_y
    if rng.random() < 0.5:  # horizontal flip
        pixels = pixels[:, ::-1]
        boxes[:, [0, 2]] = SIZE - boxes[:, [2, 0]]
    return np.ascontiguousarray(pixels), boxes, s.classes


def batch(step: int, size: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    items = [sample(TRAIN_SEED_BASE + step * size + i) for i in range(size)]
    x = torch.from_numpy(np.stack([p for p, _, _ in items])).permute(0, 3, 1, 2).float() / 255
    return x, [torch.from_numpy(b) for _, b, _ in items], [torch.from_numpy(c) for _, _, c in items]


class Batches(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Batch `i` is always the same scenes: a worker process builds them while the model trains."""

    def __init__(self, steps: int, size: int) -> None:
        self.steps, self.size = steps, size

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        return batch(step, self.size)


def assign(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """For each anchor point the index of its box (-1: background): inside the box and within
    1.5 strides of its centre (FCOS centre sampling); the smallest box wins ties."""
    n = anchors.shape[1]
    if len(boxes) == 0:
        return torch.full((n,), -1, dtype=torch.long)
    ax, ay = anchors[0][:, None], anchors[1][:, None]
    x1, y1, x2, y2 = boxes.T
    inside = (ax > x1) & (ax < x2) & (ay > y1) & (ay < y2)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    radius = torch.maximum(torch.full_like(cx, 1.5 * STRIDE), 0.15 * torch.minimum(x2 - x1, y2 - y1))
    central = ((ax - cx).abs() < radius) & ((ay - cy).abs() < radius)
    area = ((x2 - x1) * (y2 - y1))[None].expand(n, -1)
    area = torch.where(inside & central, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(dim=1)
    return torch.where(torch.isfinite(best_area), best, torch.full_like(best, -1))


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(1)
    iou = inter / union.clamp(min=1e-6)
    return iou - (hull - union) / hull.clamp(min=1e-6)


def loss_fn(model: DemoDetector, x: torch.Tensor, boxes: list[torch.Tensor],
            classes: list[torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    logits, sides = model.raw(x)
    anchors = model.anchors
    cls_target = torch.zeros_like(logits)
    pred_boxes, true_boxes = [], []
    for i, (b, c) in enumerate(zip(boxes, classes, strict=True)):
        owner = assign(anchors, b)
        pos = owner >= 0
        if not pos.any():
            continue
        cls_target[i, c[owner[pos]], pos.nonzero().squeeze(1)] = 1.0
        ax, ay = anchors[0][pos], anchors[1][pos]
        left, top, right, bottom = sides[i][:, pos]
        pred_boxes.append(torch.stack([ax - left, ay - top, ax + right, ay + bottom], 1))
        true_boxes.append(b[owner[pos]])
    num_pos = max(1, sum(len(p) for p in pred_boxes))
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="none")
    pt = p * cls_target + (1 - p) * (1 - cls_target)
    alpha = 0.25 * cls_target + 0.75 * (1 - cls_target)
    cls_loss = (alpha * (1 - pt) ** 2 * ce).sum() / num_pos
    box_loss = torch.tensor(0.0)
    if pred_boxes:
        box_loss = (1 - giou(torch.cat(pred_boxes), torch.cat(true_boxes))).mean()
    return cls_loss + 2.0 * box_loss, float(cls_loss.detach()), float(box_loss.detach())


def export(model: DemoDetector, out: Path) -> None:
    import onnx

    model.eval()
    dummy = torch.zeros(1, 3, SIZE, SIZE)
    # a dynamic batch lets GPU workers batch requests (TensorRT optimisation profile 1..32)
    torch.onnx.export(model, dummy, str(out), input_names=["images"], output_names=["output0"],
                      opset_version=17, dynamo=False,
                      dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}})
    proto = onnx.load(str(out))
    names = {i: n for i, n in enumerate(CLASSES)}
    for key, value in {"names": str(names), "imgsz": str([SIZE, SIZE]), "stride": str(STRIDE),
                       "description": "detserve demo detector (synthetic shapes)"}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=ROOT / "shared/detserve/models/demo-detector.onnx")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = DemoDetector(len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = 200
    started = time.time()
    loader = torch.utils.data.DataLoader(Batches(args.steps, args.batch), batch_size=None,
                                         num_workers=1, prefetch_factor=4)
    for step, (x, boxes, classes) in enumerate(loader):
        cosine = 0.5 * (1 + math.cos(math.pi * step / args.steps))
        lr = args.lr * min(1.0, (step + 1) / warmup) * cosine
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        loss, cls_l, box_l = loss_fn(model, x, boxes, classes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {float(loss):.3f} cls {cls_l:.3f} box {box_l:.3f} "
                  f"lr {lr:.5f} {time.time() - started:.0f}s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out.with_suffix(".pt"))  # kept out of git; re-export needs it
    export(model, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
