"""External tensor data of an uploaded model: pulled in from the package, or refused.

ONNX lets a tensor keep its bytes in a file beside the model (`data_location = EXTERNAL` plus a
`location`), and ONNX Runtime or TensorRT will open that path when it loads the model, relative to
its working directory when the model came as bytes. Any tensor of the model can do this: graph
initializers, both halves of sparse initializers, tensors in node attributes, everything in the
subgraphs of If/Loop/Scan, in model-local functions (their attributes' defaults too) and in
training graphs. Every one of them is visited here, so that the model a worker loads carries all
its bytes inline and points at nothing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator

import onnx

from detserve.errors import InvalidModel, ModelLoadError, PayloadTooLarge

_OUTSIDE = {"model": ["external data outside the package"]}


def inline(model: onnx.ModelProto, files: dict[str, bytes], *, max_bytes: int) -> None:
    """Copy every external tensor's bytes from the package's files into the model.

    Raises:
        InvalidModel: a tensor points outside the package, or past the end of its file.
        PayloadTooLarge: the inlined tensors add up to more than `max_bytes`.
    """
    total = 0
    for tensor in all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL and not tensor.external_data:
            continue
        blob = _slice(tensor, files)
        total += len(blob)
        if total > max_bytes:
            raise PayloadTooLarge(f"the model's external tensors add up to over {max_bytes} bytes")
        tensor.raw_data = blob
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def refuse_external(onnx_bytes: bytes) -> None:
    """For a worker about to load a stored model: one registered before every tensor was checked
    (or stored some other way) may still point at a file; no engine is given it.

    Raises:
        ModelLoadError: a tensor keeps its data outside the model.
    """
    try:
        model = onnx.load_from_string(onnx_bytes)
    except Exception:  # noqa: BLE001 - not ONNX at all: the engine says so in its own words
        return
    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise ModelLoadError(f"tensor {tensor.name!r} of this stored version keeps its data "
                                 "in a file outside the model, which no worker opens; upload "
                                 "the model again (as a zip with that file) as a new version")


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model that can carry data, wherever it sits."""
    yield from _graph(model.graph)
    for function in model.functions:
        yield from _attributes(function.attribute_proto)  # defaults of its attributes
        for node in function.node:
            yield from _attributes(node.attribute)
    for training in model.training_info:
        yield from _graph(training.initialization)
        yield from _graph(training.algorithm)


def _graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _attributes(node.attribute)


def _attributes(attributes: Iterable[onnx.AttributeProto]) -> Iterator[onnx.TensorProto]:
    for attr in attributes:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
        for tensor in [*sparse, *attr.sparse_tensors]:
            yield from (tensor.values, tensor.indices)
        if attr.HasField("g"):
            yield from _graph(attr.g)
        for graph in attr.graphs:
            yield from _graph(graph)


def _slice(tensor: onnx.TensorProto, files: dict[str, bytes]) -> bytes:
    """The tensor's bytes from the package file it names."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    name = _inside(location)
    if name is None or name not in files:
        raise InvalidModel(f"tensor {tensor.name!r} keeps its data at {location!r}, outside the "
                           "package (only files of the uploaded zip may hold tensor data); put "
                           "the file beside model.onnx in the zip",
                           fields=_OUTSIDE)
    blob = files[name]
    try:
        start = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else len(blob) - start
    except ValueError:
        start = length = -1
    if start < 0 or length < 0 or start + length > len(blob):
        raise InvalidModel(f"tensor {tensor.name!r} asks for bytes {entries.get('offset')}+"
                           f"{entries.get('length')} of {location!r}, which has {len(blob)}",
                           fields={"model": ["external data past the end of its file"]})
    return blob[start:start + length]


def _inside(location: str) -> str | None:
    """The package file a location names, or None where it could only name a file elsewhere."""
    path = location.replace("\\", "/")
    if not path or path.startswith("/") or ":" in path or "\0" in path:
        return None
    norm = posixpath.normpath(path)
    return None if norm == ".." or norm.startswith("../") else norm
