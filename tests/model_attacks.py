"""ONNX models and zips built to make a worker read a host file, or the API fail (issue 12):
external data in every place a tensor can sit, damaged or encrypted zips, metadata that lies."""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from detserve.service.demo import build_blob_detector

ATTACK_DOMAIN = "detserve.attack"


def external(name: str, location: str, dims: tuple[int, ...] = (4,),
             dtype: int = TensorProto.FLOAT, **entries: str) -> TensorProto:
    """A tensor whose bytes are 'stored' at `location` (offset and length optional)."""
    tensor = TensorProto(name=name, data_type=dtype, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, **entries}.items():
        tensor.external_data.add(key=key, value=value)
    return tensor


def _demo_with(nodes: list[onnx.NodeProto] = (), inits: list[TensorProto] = (),
               sparse: list[onnx.SparseTensorProto] = (),
               functions: list[onnx.FunctionProto] = ()) -> bytes:
    model = build_blob_detector()
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    model.graph.sparse_initializer.extend(sparse)
    model.functions.extend(functions)
    if functions:
        model.opset_import.append(helper.make_opsetid(ATTACK_DOMAIN, 1))
    return model.SerializeToString()


def sparse_initializer(location: str, part: str = "values") -> bytes:
    """The attack of issue 12: a sparse initializer whose values (or indices) live in a file."""
    values = numpy_helper.from_array(np.ones(2, np.float32), "leak")
    indices = numpy_helper.from_array(np.asarray([0, 3], np.int64), "leak_indices")
    if part == "values":
        values = external("leak", location, (2,))
    else:
        indices = external("leak_indices", location, (2,), TensorProto.INT64)
    return _demo_with(sparse=[helper.make_sparse_tensor(values, indices, [4])])


def constant_attribute(location: str) -> bytes:
    node = helper.make_node("Constant", [], ["leak_out"], value=external("leak", location))
    return _demo_with(nodes=[node])


def sparse_constant_attribute(location: str) -> bytes:
    values = external("leak", location, (2,))
    indices = numpy_helper.from_array(np.asarray([0, 3], np.int64), "leak_indices")
    node = helper.make_node("Constant", [], ["leak_out"],
                            sparse_value=helper.make_sparse_tensor(values, indices, [4]))
    return _demo_with(nodes=[node])


def _branch(name: str, nodes: list[onnx.NodeProto], inits: list[TensorProto] = ()) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(
        f"{name}_out", TensorProto.FLOAT, [4])], initializer=list(inits))


def if_subgraph(location: str) -> bytes:
    """An If whose then-branch has an initializer kept in a file."""
    then = _branch("then", [helper.make_node("Identity", ["sub_w"], ["then_out"])],
                   [external("sub_w", location)])
    other = _branch("else", [helper.make_node("Constant", [], ["else_out"],
                                              value=numpy_helper.from_array(np.zeros(4, np.float32)))])
    flag = numpy_helper.from_array(np.asarray(True), "flag")
    node = helper.make_node("If", ["flag"], ["leak_out"], then_branch=then, else_branch=other)
    return _demo_with(nodes=[node], inits=[flag])


def loop_in_if_subgraph(location: str) -> bytes:
    """A Loop inside an If's branch, whose body has a Constant kept in a file (two levels deep)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Constant", [], ["scan"], value=external("leak", location))],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, [4])])
    loop = helper.make_node("Loop", ["trip", "flag"], ["then_out"], body=body)
    then = helper.make_graph([loop], "then", [], [helper.make_tensor_value_info(
        "then_out", TensorProto.FLOAT, [1, 4])])
    other = helper.make_graph([helper.make_node("Constant", [], ["else_out"], value=numpy_helper.from_array(
        np.zeros((1, 4), np.float32)))], "else", [], [helper.make_tensor_value_info(
            "else_out", TensorProto.FLOAT, [1, 4])])
    inits = [numpy_helper.from_array(np.asarray(True), "flag"),
             numpy_helper.from_array(np.asarray(1, np.int64), "trip")]
    node = helper.make_node("If", ["flag"], ["leak_out"], then_branch=then, else_branch=other)
    return _demo_with(nodes=[node], inits=inits)


def local_function(location: str) -> bytes:
    """A model-local function whose Constant is kept in a file, called by the main graph."""
    function = helper.make_function(
        ATTACK_DOMAIN, "Leak", [], ["y"],
        [helper.make_node("Constant", [], ["y"], value=external("leak", location))],
        [helper.make_opsetid("", 17)])
    return _demo_with(nodes=[helper.make_node("Leak", [], ["leak_out"], domain=ATTACK_DOMAIN)],
                      functions=[function])


def function_attribute_default(location: str) -> bytes:
    """A model-local function whose attribute's default value is a tensor kept in a file."""
    function = helper.make_function(
        ATTACK_DOMAIN, "Leak", [], ["y"],
        [helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(
            np.zeros(4, np.float32)))],
        [helper.make_opsetid("", 17)],
        attribute_protos=[helper.make_attribute("weights", external("leak", location))])
    return _demo_with(nodes=[helper.make_node("Leak", [], ["leak_out"], domain=ATTACK_DOMAIN)],
                      functions=[function])


PLACES = {
    "sparse-initializer-values": sparse_initializer,
    "sparse-initializer-indices": lambda loc: sparse_initializer(loc, "indices"),
    "constant-attribute": constant_attribute,
    "sparse-constant-attribute": sparse_constant_attribute,
    "if-subgraph-initializer": if_subgraph,
    "loop-in-if-subgraph": loop_in_if_subgraph,
    "model-local-function": local_function,
    "function-attribute-default": function_attribute_default,
}


# ---- zips ------------------------------------------------------------------------------------


def zipped(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def with_symlink(entries: dict[str, bytes], link: str, target: str) -> bytes:
    buf = io.BytesIO(zipped(entries))
    with zipfile.ZipFile(buf, "a") as zf:
        info = zipfile.ZipInfo(link)
        info.external_attr = 0o120777 << 16  # a symbolic link, as `zip --symlinks` stores it
        zf.writestr(info, target)
    return buf.getvalue()


def _patch_headers(data: bytes, field: str, change) -> bytes:
    """Apply `change` to a 16-bit field of every local and central header of the zip."""
    offsets = {"flags": (6, 8), "method": (8, 10)}[field]  # local, central
    out = bytearray(data)
    for signature, offset in zip((b"PK\x03\x04", b"PK\x01\x02"), offsets, strict=True):
        at = out.find(signature)
        while at >= 0:
            (old,) = struct.unpack_from("<H", out, at + offset)
            struct.pack_into("<H", out, at + offset, change(old))
            at = out.find(signature, at + 4)
    return bytes(out)


def encrypted(entries: dict[str, bytes]) -> bytes:
    """Every entry flagged as encrypted (general purpose bit 0), as `zip -e` marks them."""
    return _patch_headers(zipped(entries), "flags", lambda flags: flags | 1)


def unknown_method(entries: dict[str, bytes]) -> bytes:
    """Every entry claims compression method 99 (AES), which zipfile cannot read."""
    return _patch_headers(zipped(entries), "method", lambda _: 99)


def damaged_entry(entries: dict[str, bytes]) -> bytes:
    """A deflated entry with its compressed bytes scrambled in the middle."""
    data = bytearray(zipped(entries))
    start = 30 + len(next(iter(entries)))  # after the first local header and its name
    for i in range(start + 20, start + 60):
        data[i] ^= 0x5A
    return bytes(data)
