"""The demo model `detserve up` registers on first start.

Until the trained demo detector ships, this builds a small real detection model from ONNX
operators: it finds saturated red, green and blue blobs on a 20x20 grid and answers in the
Ultralytics v8 layout [1, 4+3, 400], with its labels and input size in the ONNX metadata
(as Ultralytics exports carry them), so it registers with no config.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DEMO_NAME = "demo-detector"
LABELS = ["red", "green", "blue"]
SIZE, STRIDE = 320, 16


def demo_model_bytes() -> bytes:
    """The trained demo detector when it is packaged, else the built colour-blob detector."""
    packaged = resources.files("detserve").joinpath("models/demo-detector.onnx")
    if packaged.is_file():
        return packaged.read_bytes()
    return build_blob_detector().SerializeToString()


def build_blob_detector() -> onnx.ModelProto:
    cells = SIZE // STRIDE
    n = cells * cells
    # A colour scores high where it dominates the other two channels of a cell.
    weight = np.full((3, 3, 1, 1), -12.0, dtype=np.float32)
    for c in range(3):
        weight[c, c] = 24.0
    bias = np.full(3, -6.0, dtype=np.float32)
    ys, xs = np.divmod(np.arange(n), cells)
    boxes = np.stack([(xs + 0.5) * STRIDE, (ys + 0.5) * STRIDE,
                      np.full(n, 2.0 * STRIDE), np.full(n, 2.0 * STRIDE)]).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[STRIDE, STRIDE],
                         strides=[STRIDE, STRIDE]),
        helper.make_node("Conv", ["pooled", "w", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
        helper.make_node("Reshape", ["probs", "shape"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "demo-blob-detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + len(LABELS), n])],
        initializer=[
            numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
            numpy_helper.from_array(np.asarray([1, len(LABELS), n], dtype=np.int64), "shape"),
            numpy_helper.from_array(boxes[None], "boxes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    names = {i: label for i, label in enumerate(LABELS)}
    for key, value in {"names": str(names), "imgsz": str([SIZE, SIZE]),
                       "description": "detserve demo colour-blob detector"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model
