"""Build a YOLOv8n-sized ONNX model offline from Ultralytics' own yolov8.yaml (scale n), with
calibrated random weights, for the benchmark (dev-only; cached; needs the `train` extra).

Random weights detect nothing, so the model is calibrated: BatchNorm statistics are re-estimated
on synthetic scene crops, then the class bias is shifted until the bench image yields 20-50 boxes
after NMS, so that decoding and NMS do the work they do for a trained model.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "shared"))

from detserve.inference.synthetic import scene  # noqa: E402
from detserve.processing import postprocess  # noqa: E402
from detserve.processing.preprocess import TensorSpec, resize  # noqa: E402

SIZE = 640
SPEC = {"layout": "v8", "score_threshold": 0.25, "iou_threshold": 0.45, "max_detections": 300}


def ultralytics_yaml(cache: Path) -> dict:
    """yolov8.yaml from the ultralytics wheel (downloaded once, without its dependencies)."""
    target = cache / "yolov8.yaml"
    if not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "ultralytics", "-d", tmp], check=True)
            wheel = next(Path(tmp).glob("ultralytics-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                target.write_bytes(zf.read("ultralytics/cfg/models/v8/yolov8.yaml"))
    return yaml.safe_load(target.read_text())


class Conv(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2 = Conv(c1, c2, 3), Conv(c2, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c = c1 // 2
        self.cv1, self.cv2 = Conv(c1, c, 1), Conv(c * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """Anchor-free head with DFL; outputs [B, 4+nc, anchors] (cx, cy, w, h in pixels, probs)."""

    reg_max = 16

    def __init__(self, nc: int, ch: list[int], strides: list[int]) -> None:
        super().__init__()
        c2, c3 = max(16, ch[0] // 4, self.reg_max * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3),
                                               nn.Conv2d(c2, 4 * self.reg_max, 1)) for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1))
                                 for x in ch)
        self.strides = strides
        for a, b, s in zip(self.cv2, self.cv3, strides, strict=True):
            a[-1].bias.data[:] = 1.0
            b[-1].bias.data[:nc] = math.log(5 / nc / (SIZE / s) ** 2)
        anchors, stride_t = [], []
        for s in strides:
            n = SIZE // s
            ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
            anchors.append(torch.stack([xs, ys]).reshape(2, -1))
            stride_t.append(torch.full((1, n * n), float(s)))
        self.register_buffer("anchors", torch.cat(anchors, 1), persistent=False)
        self.register_buffer("stride_t", torch.cat(stride_t, 1), persistent=False)
        self.register_buffer("bins", torch.arange(self.reg_max).float(), persistent=False)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        box = torch.cat([a(x).flatten(2) for a, x in zip(self.cv2, xs, strict=True)], 2)
        cls = torch.cat([b(x).flatten(2) for b, x in zip(self.cv3, xs, strict=True)], 2)
        bsz, _, n = box.shape
        dist = (box.view(bsz, 4, self.reg_max, n).softmax(2) * self.bins.view(1, 1, -1, 1)).sum(2)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = self.anchors - lt, self.anchors + rb
        xywh = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * self.stride_t
        return torch.cat([xywh, cls.sigmoid()], 1)


class YOLO(nn.Module):
    def __init__(self, cfg: dict, scale: str = "n") -> None:
        super().__init__()
        depth, width, max_ch = cfg["scales"][scale]
        nc = cfg["nc"]
        channels: list[int] = []  # output channels of each layer so far
        layers, sources = nn.ModuleList(), []
        for frm, repeats, kind, args in cfg["backbone"] + cfg["head"]:
            n = max(round(repeats * depth), 1) if repeats > 1 else repeats
            ch_in = [channels[f] if channels else 3 for f in (frm if isinstance(frm, list) else [frm])]
            if kind in ("Conv", "C2f", "SPPF"):
                c2 = math.ceil(min(args[0], max_ch) * width / 8) * 8
                if kind == "Conv":
                    layer = Conv(ch_in[0], c2, *args[1:])
                elif kind == "C2f":
                    layer = C2f(ch_in[0], c2, n, *args[1:])
                else:
                    layer = SPPF(ch_in[0], c2, *args[1:])
            elif kind == "nn.Upsample":
                layer, c2 = nn.Upsample(scale_factor=2, mode="nearest"), ch_in[0]
            elif kind == "Concat":
                layer, c2 = Concat(), sum(ch_in)
            else:
                layer, c2 = Detect(nc, ch_in, [8, 16, 32]), 0
            layers.append(layer)
            sources.append(frm)
            channels.append(c2)
        self.layers, self.sources = layers, sources

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        for layer, frm in zip(self.layers, self.sources, strict=True):
            if isinstance(frm, list):
                x = layer([x if f == -1 else outputs[f] for f in frm])
            else:
                x = layer(x if frm == -1 else outputs[frm])
            outputs.append(x)
        return x


class Concat(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


def tensor_of(image: bytes) -> torch.Tensor:
    from detserve.processing.image import decode

    decoded = decode(image, max_bytes=1 << 30, max_pixels=1 << 30)
    pixels, _ = resize(decoded.image, (SIZE, SIZE), "letterbox")
    return torch.from_numpy(TensorSpec.from_spec({"scale": 1 / 255})(pixels))


def count_boxes(model: YOLO, x: torch.Tensor) -> int:
    with torch.no_grad():
        out = model(x).numpy()
    boxes, _, _ = postprocess.decode([out], SPEC, (SIZE, SIZE))
    return len(boxes)


def calibrate(model: YOLO, bench_image: bytes) -> float:
    # BatchNorm statistics from synthetic scene crops, so activations are neither dead nor huge
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(8):
            crops = [tensor_of(scene(50_000 + 4 * i + k, 640, 640).encode()) for k in range(4)]
            model(torch.cat(crops))
    model.eval()
    # shift the class bias until NMS keeps 20-50 boxes on the bench image
    x = tensor_of(bench_image)
    heads = [seq[-1] for seq in model.layers[-1].cv3]
    base = [h.bias.data.clone() for h in heads]
    lo, hi = -20.0, 20.0
    for _ in range(40):
        mid = (lo + hi) / 2
        for h, b in zip(heads, base, strict=True):
            h.bias.data = b + mid
        n = count_boxes(model, x)
        if 20 <= n <= 50:
            return mid
        lo, hi = (mid, hi) if n < 20 else (lo, mid)
    raise RuntimeError("could not calibrate the class bias to 20-50 boxes")


def build(cache: Path, bench_image: bytes) -> Path:
    out = cache / "yolov8n-calibrated.onnx"
    if out.exists():
        return out
    torch.manual_seed(0)
    model = YOLO(ultralytics_yaml(cache))
    params = sum(p.numel() for p in model.parameters())
    shift = calibrate(model, bench_image)
    import onnx

    torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), str(out), input_names=["images"],
                      output_names=["output0"], opset_version=17, dynamo=False)
    proto = onnx.load(str(out))
    names = {i: f"class{i}" for i in range(80)}
    for key, value in {"names": str(names), "imgsz": str([SIZE, SIZE]),
                       "description": f"YOLOv8n layers from yolov8.yaml, {params} parameters, "
                                      f"calibrated random weights (class bias {shift:+.2f})"}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    print(f"built {out.name}: {params} parameters, {count_boxes(model, tensor_of(bench_image))} "
          "boxes on the bench image", flush=True)
    return out


if __name__ == "__main__":
    cache = ROOT / ".bench-cache"
    cache.mkdir(exist_ok=True)
    from steps import bench_image

    print(build(cache, bench_image()))
