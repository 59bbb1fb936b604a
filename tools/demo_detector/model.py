"""The demo detector: a small anchor-free CNN (stride-8 head over a light FPN) whose ONNX output
is the Ultralytics v8 layout [1, 4+classes, anchors] (cx, cy, w, h in input pixels, class
probabilities), so detserve's `yolo` decoder serves it like any YOLOv8 export."""

from __future__ import annotations

import torch
from torch import nn

SIZE = 320
STRIDE = 8
MAX_SIDE = 160.0  # the farthest a box side may be from its anchor point, in pixels


def conv(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.SiLU(inplace=True))


class DemoDetector(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.nc = num_classes
        self.s1 = nn.Sequential(conv(3, 16, 3, 2), conv(16, 24, 3, 2))  # /4
        self.s3 = nn.Sequential(conv(24, 48, 3, 2), conv(48, 48))  # /8
        self.s4 = nn.Sequential(conv(48, 64, 3, 2), conv(64, 64))  # /16
        self.s5 = nn.Sequential(conv(64, 96, 3, 2), conv(96, 96))  # /32
        self.lat5, self.lat4, self.lat3 = conv(96, 48, 1), conv(64, 48, 1), conv(48, 48, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Sequential(conv(48, 48), conv(48, 48))
        self.cls = nn.Conv2d(48, num_classes, 1)
        self.box = nn.Conv2d(48, 4, 1)
        nn.init.constant_(self.cls.bias, -4.6)  # start near p = 0.01: focal-loss practice
        cells = SIZE // STRIDE
        ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
        anchors = torch.stack([(xs + 0.5) * STRIDE, (ys + 0.5) * STRIDE]).reshape(2, -1)
        self.register_buffer("anchors", anchors.float(), persistent=False)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (B, nc, N) and box sides l, t, r, b in pixels (B, 4, N)."""
        c3 = self.s3(self.s1(x))
        c4 = self.s4(c3)
        c5 = self.s5(c4)
        p4 = self.lat4(c4) + self.up(self.lat5(c5))
        p3 = self.lat3(c3) + self.up(p4)
        h = self.head(p3)
        logits = self.cls(h).flatten(2)
        sides = torch.sigmoid(self.box(h).flatten(2)) * MAX_SIDE
        return logits, sides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, sides = self.raw(x)
        a = self.anchors.unsqueeze(0)
        left, top, right, bottom = sides.unbind(1)
        cx = a[:, 0] + (right - left) / 2
        cy = a[:, 1] + (bottom - top) / 2
        box = torch.stack([cx, cy, left + right, top + bottom], dim=1)
        return torch.cat([box, torch.sigmoid(logits)], dim=1)
