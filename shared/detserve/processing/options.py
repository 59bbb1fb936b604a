"""Per-request answer options: thresholds, NMS overlap, how many boxes, which classes, box format.

The API parses them from a prediction's form fields or query parameters (`parse`), checks the
class names against the model's labels (`check_labels`) and sends them with the frame or task as
a plain dict (`to_dict`); the worker rebuilds them (`from_dict`) and post-processing applies them:
thresholds before NMS, NMS at the request's overlap, the classes filter, then the cap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detserve.errors import ValidationFailed

BOX_FORMATS = ("yxyx", "xyxy", "xywh", "yxyx_norm", "xyxy_norm", "xywh_norm")
MAX_DETECTIONS = 1000
NAMES = ("score_threshold", "class_thresholds", "iou_threshold", "max_detections", "classes",
         "box_format")


@dataclass(frozen=True)
class AnswerOptions:
    """What the caller asked of the answer; None: the version's own setting."""

    score_threshold: float | None = None
    class_thresholds: dict[str, float] = field(default_factory=dict)
    iou_threshold: float | None = None
    max_detections: int | None = None
    classes: tuple[str, ...] | None = None
    box_format: str = "yxyx"

    def to_dict(self) -> dict[str, Any]:
        """Only what differs from the defaults (an empty dict for a plain request)."""
        out: dict[str, Any] = {}
        for name, value in (("score_threshold", self.score_threshold),
                            ("iou_threshold", self.iou_threshold),
                            ("max_detections", self.max_detections)):
            if value is not None:
                out[name] = value
        if self.class_thresholds:
            out["class_thresholds"] = dict(self.class_thresholds)
        if self.classes is not None:
            out["classes"] = list(self.classes)
        if self.box_format != "yxyx":
            out["box_format"] = self.box_format
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AnswerOptions:
        """The options `to_dict` wrote (already checked by the API)."""
        data = data or {}
        classes = data.get("classes")
        return cls(data.get("score_threshold"), dict(data.get("class_thresholds") or {}),
                   data.get("iou_threshold"), data.get("max_detections"),
                   tuple(classes) if classes is not None else None,
                   str(data.get("box_format", "yxyx")))

    def check_labels(self, labels: Sequence[str]) -> None:
        """Raises ValidationFailed naming class names the model does not have."""
        known = set(labels)
        for name, given in (("class_thresholds", list(self.class_thresholds)),
                            ("classes", list(self.classes or ()))):
            unknown = [c for c in given if c not in known]
            if unknown:
                message = (f"unknown class names {unknown} in {name}; this model's labels are "
                           f"{list(labels)}")
                raise ValidationFailed(message, fields={name: [message]})

    def thresholds(self, labels: Sequence[str], default: float) -> np.ndarray:
        """The score threshold of each class id, per-class values over the global one."""
        base = default if self.score_threshold is None else self.score_threshold
        return np.asarray([self.class_thresholds.get(label, base) for label in labels],
                          dtype=np.float32)

    def class_ids(self, labels: Sequence[str]) -> np.ndarray | None:
        """The ids of the classes to keep (None: all)."""
        if self.classes is None:
            return None
        wanted = set(self.classes)
        return np.asarray([i for i, label in enumerate(labels) if label in wanted], dtype=np.int64)



# the options of a request that asks for nothing: one shared instance, never changed
PLAIN = AnswerOptions()

def parse(values: Mapping[str, str]) -> AnswerOptions:
    """The options among form fields / query parameters (other names are ignored).

    Raises:
        ValidationFailed: a value out of range or of the wrong kind, naming the field.
    """
    errors: dict[str, list[str]] = {}
    parsed: dict[str, Any] = {}
    for name in NAMES:
        raw = values.get(name)
        if raw is None or raw == "":
            continue
        try:
            parsed[name] = _PARSERS[name](raw)
        except ValueError as exc:
            errors[name] = [str(exc)]
    if errors:
        detail = "; ".join(f"{k}: {v[0]}" for k, v in sorted(errors.items()))
        raise ValidationFailed(f"invalid {', '.join(sorted(errors))} ({detail})", fields=errors)
    return AnswerOptions.from_dict(parsed)


def _fraction(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"{raw!r} is not a number from 0 to 1")
    return value


def _count(raw: str) -> int:
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_DETECTIONS:
        raise ValueError(f"{raw!r} is not a whole number from 1 to {MAX_DETECTIONS}")
    return int(raw)


def _class_thresholds(raw: str) -> dict[str, float]:
    expected = 'a JSON object of class name to a number from 0 to 1, e.g. {"person": 0.5}'
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{raw[:80]!r} is not {expected}")
    out = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"{name!r}: {value!r} is not a number from 0 to 1 ({expected})")
        out[str(name)] = float(value)
    return out


def _classes(raw: str) -> list[str]:
    expected = 'class names as a comma-separated list or a JSON list, e.g. person,car'
    if raw.lstrip().startswith("["):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise ValueError(f"{raw[:80]!r} is not {expected}")
        names = [c.strip() for c in data]
    else:
        names = [c.strip() for c in raw.split(",")]
    if not names or not all(names):
        raise ValueError(f"{raw[:80]!r} is not {expected} (no empty names)")
    return names


def _box_format(raw: str) -> str:
    if raw not in BOX_FORMATS:
        raise ValueError(f"{raw[:40]!r} is not one of {', '.join(BOX_FORMATS)}")
    return raw


_PARSERS = {"score_threshold": _fraction, "iou_threshold": _fraction, "max_detections": _count,
            "class_thresholds": _class_thresholds, "classes": _classes,
            "box_format": _box_format}


def format_boxes(yxyx: np.ndarray, box_format: str, width: int, height: int) -> np.ndarray:
    """Image-pixel [y_min, x_min, y_max, x_max] boxes in the asked format."""
    base = box_format.removesuffix("_norm")
    if base == "yxyx":
        out = yxyx
    else:
        xyxy = yxyx[:, [1, 0, 3, 2]]
        out = xyxy if base == "xyxy" else np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]],
                                                         axis=1)
    if box_format.endswith("_norm"):
        scale = [height, width, height, width] if base == "yxyx" else [width, height] * 2
        out = out / np.asarray(scale, dtype=np.float64)
    return out
