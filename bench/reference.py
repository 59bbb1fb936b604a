"""The independent reference pipeline: YOLO detection on ONNX Runtime as a user writes it by hand.

It imports nothing of detserve, so the bench's ceiling does not move when detserve's pipeline
does. Each step follows the usual recipe:
  decode     Pillow, EXIF orientation applied (ImageOps.exif_transpose), converted to RGB
  letterbox  Ultralytics' LetterBox: resize to fit keeping the aspect ratio (bilinear), pad to the
             model's size with gray 114, centred (the split of an odd padding as Ultralytics does)
  tensor     float32 NCHW, divided by 255
  model      onnxruntime.InferenceSession.run
  decode     YOLOv8 output [1, 4+classes, anchors] (cx, cy, w, h in input pixels, class scores):
             best class per anchor, confidence filter, xywh to xyxy
  NMS        greedy, per class (boxes offset by class, as Ultralytics does), in numpy
  rescale    Ultralytics' scale_boxes: remove the padding, divide by the gain, clip to the image
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

MAX_WH = 7680.0  # Ultralytics' class offset for batched NMS: larger than any box coordinate


@dataclass(frozen=True)
class Result:
    """Boxes as [y_min, x_min, y_max, x_max] in original-image pixels (detserve's order)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def session(model: bytes, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


class Reference:
    """One model, the Ultralytics defaults detserve serves with (conf 0.25, IoU 0.45, 100 boxes)."""

    def __init__(self, model: bytes, threads: int = 1, conf: float = 0.25, iou: float = 0.45,
                 max_det: int = 100) -> None:
        self.session = session(model, threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.size = (int(inp.shape[2]), int(inp.shape[3]))  # h, w
        self.conf, self.iou, self.max_det = conf, iou, max_det

    def __call__(self, data: bytes) -> Result:
        return self.detect(decode(data))

    def detect(self, img: Image.Image) -> Result:
        """Everything after decoding: boxes in `img`'s pixels."""
        tensor, ratio, pad = letterbox(img, self.size)
        out = self.session.run(None, {self.input_name: tensor})[0]
        boxes, scores, classes = postprocess(out, self.conf, self.iou, self.max_det)
        return Result(scale_boxes(boxes, ratio, pad, img.size), scores, classes)


def answer(result: Result, labels: list[str]) -> dict[str, list]:
    """The answer as a caller gets it: class names, boxes to 0.01 px, scores to 5 decimals."""
    return {"detection_classes": [labels[c] if c < len(labels) else str(c)
                                  for c in result.classes.tolist()],
            "detection_boxes": np.round(result.boxes.astype(np.float64), 2).tolist(),
            "detection_scores": np.round(result.scores.astype(np.float64), 5).tolist()}


def decode(data: bytes) -> Image.Image:
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    return img.convert("RGB")


def letterbox(img: Image.Image, size: tuple[int, int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """A float32 NCHW batch of one in [0, 1], the resize ratio, and the (left, top) padding."""
    h, w = size
    r = min(h / img.height, w / img.width)
    new_w, new_h = round(img.width * r), round(img.height * r)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    dw, dh = (w - new_w) / 2, (h - new_h) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)
    canvas = np.full((h, w, 3), 114, dtype=np.uint8)
    canvas[top:top + new_h, left:left + new_w] = np.asarray(img)
    tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    return np.ascontiguousarray(tensor), r, (left, top)


def postprocess(out: np.ndarray, conf: float, iou: float,
                max_det: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YOLOv8 [1, 4+nc, N] to xyxy boxes, scores and classes kept by NMS, best first."""
    pred = out[0].T  # (N, 4+nc)
    cls = pred[:, 4:]
    scores = cls.max(axis=1)
    mask = scores > conf
    pred, scores = pred[mask], scores[mask]
    classes = cls[mask].argmax(axis=1)
    xy, wh = pred[:, :2], pred[:, 2:4]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
    keep = nms(boxes + classes[:, None] * MAX_WH, scores, iou)[:max_det]
    return boxes[keep], scores[keep], classes[keep]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1) * np.maximum(0.0, yy2 - yy1)
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def scale_boxes(boxes: np.ndarray, ratio: float, pad: tuple[int, int],
                image_wh: tuple[int, int]) -> np.ndarray:
    """Input-pixel xyxy to original-image [y_min, x_min, y_max, x_max], clipped."""
    w, h = image_wh
    x = ((boxes[:, [0, 2]] - pad[0]) / ratio).clip(0, w)
    y = ((boxes[:, [1, 3]] - pad[1]) / ratio).clip(0, h)
    return np.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], axis=1)
