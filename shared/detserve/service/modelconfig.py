"""The model config (`model.json` or the `config` field): how to feed and decode a model."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from detserve.processing import decoders

# pixels per side of the model's input: a worker allocates height x width x 3 floats per image
# (and at warm-up) from it, so a typo of 64000 must not reach a worker
MAX_SIDE = 8192


class InputSchema(Schema):
    size = fields.Raw(load_default=None)  # int or [h, w]; inferred from the ONNX input if absent
    resize = fields.String(load_default="letterbox", validate=validate.OneOf(["letterbox", "stretch"]))
    color = fields.String(load_default="RGB", validate=validate.OneOf(["RGB", "BGR"]))
    scale = fields.Float(load_default=None)
    mean = fields.List(fields.Float(), load_default=None, validate=validate.Length(equal=3))
    # the pixels are divided by std: a zero would turn every input into inf or nan
    std = fields.List(fields.Float(validate=validate.Range(
        min=0, min_inclusive=False, error="each std is a positive number (the pixels are divided by it)")),
        load_default=None, validate=validate.Length(equal=3))
    layout = fields.String(load_default=None, validate=validate.OneOf(["NCHW", "NHWC"]))
    dtype = fields.String(load_default=None, validate=validate.OneOf(["float32", "uint8"]))

    @validates_schema
    def _size(self, data: dict[str, Any], **_: Any) -> None:
        size = data.get("size")
        if size is None:
            return
        sides = size if isinstance(size, list) and len(size) == 2 else [size]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE
                   for v in sides):
            raise ValidationError(f"size is an integer 1..{MAX_SIDE} or [height, width] of such",
                                  "size")


class OutputSchema(Schema):
    decoder = fields.String(load_default="yolo")  # a name in the decoder registry
    options = fields.Dict(keys=fields.String(), load_default=dict)  # the decoder's own
    score_threshold = fields.Float(load_default=0.25, validate=validate.Range(0, 1))
    iou_threshold = fields.Float(load_default=0.45, validate=validate.Range(0, 1))
    max_detections = fields.Integer(load_default=100, validate=validate.Range(1, 10000))
    class_offset = fields.Integer(load_default=0)


    @validates_schema
    def _decoder(self, data: dict[str, Any], **_: Any) -> None:
        try:
            decoders.get(data.get("decoder", "yolo"))
        except ValueError as exc:
            raise ValidationError(str(exc), "decoder") from exc


class ModelConfigSchema(Schema):
    labels = fields.List(fields.String(), load_default=None)
    input = fields.Nested(InputSchema, load_default=lambda: InputSchema().load({}))
    output = fields.Nested(OutputSchema, load_default=lambda: OutputSchema().load({}))


def load_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a config dict and fill its defaults.

    Raises:
        marshmallow.ValidationError: with messages keyed by field.
    """
    loaded: dict[str, Any] = ModelConfigSchema().load(raw)
    return loaded
