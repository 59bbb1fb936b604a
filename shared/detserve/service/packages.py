"""Model packages: an .onnx file or a .zip with model.onnx + model.json, checked and described."""

from __future__ import annotations

import ast
import io
import json
import posixpath
import stat
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import onnx
from marshmallow import ValidationError

from detserve.errors import InvalidModel, PayloadTooLarge
from detserve.processing.postprocess import match_outputs
from detserve.service import externaldata
from detserve.service.modelconfig import MAX_SIDE, load_config

_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.UINT8: "uint8"}
MAX_ZIP_ENTRIES = 4096  # each is read into memory: a bound on the work, not only the bytes
_MAX_META_CHARS = 1 << 20  # a class list this long is no class list; literal_eval of it is costly


@dataclass(frozen=True)
class ModelPackage:
    """A checked ONNX model and its complete config (labels, input, output)."""

    onnx_bytes: bytes
    labels: list[str]
    input: dict[str, Any]
    output: dict[str, Any]


def read_package(data: bytes, config_text: str | None, *, max_bytes: int) -> ModelPackage:
    """Check an upload and work out how to run it.

    Raises:
        InvalidModel: not ONNX or zip, unsafe paths, fails onnx.checker, or config mismatch.
        PayloadTooLarge: over the model size limit.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the model is {len(data)} bytes; the limit is {max_bytes} bytes")
    if not data:
        raise InvalidModel("no model was sent: upload an .onnx file or a .zip in field 'model'",
                           fields={"model": ["missing or empty"]})
    files: dict[str, bytes] = {}
    config: dict[str, Any] = {}
    if data.startswith(b"PK"):
        files = _unzip(data, max_bytes=max_bytes)
        if "model.onnx" not in files:
            raise InvalidModel("the zip holds no model.onnx at its top level",
                               fields={"model": ["zip without model.onnx"]})
        if "model.json" in files:
            config = _json(files["model.json"], "model.json")
        data = files["model.onnx"]
    if config_text:
        config = _json(config_text.encode(), "config")
    model = _parse(data, files, max_bytes)
    return _describe(model, config)


def _unzip(data: bytes, *, max_bytes: int) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise InvalidModel(f"the zip is damaged: {exc}", fields={"model": ["bad zip"]}) from exc
    if len(infos) > MAX_ZIP_ENTRIES:
        raise InvalidModel(f"the zip holds {len(infos)} entries; a package needs model.onnx, "
                           f"model.json and its weight files (at most {MAX_ZIP_ENTRIES})",
                           fields={"model": ["too many zip entries"]})
    total = 0
    files: dict[str, bytes] = {}
    for info in infos:
        name = info.filename
        if _escapes(name):
            raise InvalidModel(f"the zip entry {name!r} points outside the package",
                               fields={"model": ["unsafe path in zip"]})
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidModel(f"the zip entry {name!r} is a symbolic link; put the file itself "
                               "in the zip", fields={"model": ["symbolic link in zip"]})
        if info.flag_bits & 0x1:
            raise InvalidModel(f"the zip entry {name!r} is encrypted; upload a zip without a "
                               "password", fields={"model": ["encrypted zip entry"]})
        total += info.file_size
        if total > max_bytes:
            raise PayloadTooLarge(f"the zip unpacks to over {max_bytes} bytes")
        if not info.is_dir():
            files[posixpath.normpath(name)] = _read_entry(archive, info)
    return files


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(info)
    # zipfile reports damage as any of these (CRC, deflate stream, unknown method, short data)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError,
            OSError, ValueError) as exc:
        raise InvalidModel(f"the zip entry {info.filename!r} is damaged or uses a compression "
                           "this server cannot read; zip it again with the deflate or store "
                           "method", fields={"model": ["damaged zip entry"]}) from exc


def _escapes(name: str) -> bool:
    norm = posixpath.normpath(name.replace("\\", "/"))
    return name.startswith(("/", "\\")) or norm.startswith("..") or ":" in name.split("/")[0]


def _json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's stack
        raise InvalidModel(f"{where} is not valid JSON: {exc}", fields={"config": ["bad JSON"]}) from exc
    if not isinstance(value, dict):
        raise InvalidModel(f"{where} must be a JSON object", fields={"config": ["not an object"]})
    return value


def _parse(data: bytes, files: dict[str, bytes], max_bytes: int) -> onnx.ModelProto:
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:
        raise InvalidModel(f"the file is not an ONNX model: {exc}",
                           fields={"model": ["not ONNX"]}) from exc
    externaldata.inline(model, files, max_bytes=max_bytes)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModel(f"onnx.checker refused the model: {first}",
                           fields={"model": ["fails onnx.checker"]}) from exc
    return model


def _describe(model: onnx.ModelProto, raw_config: dict[str, Any]) -> ModelPackage:
    try:
        config = load_config(raw_config)
    except ValidationError as exc:
        raise InvalidModel("the model config is invalid", fields=_flatten(exc.messages)) from exc
    meta = {p.key: p.value for p in model.metadata_props}
    labels = config["labels"] or _meta_labels(meta)
    spec = _input_spec(model, config["input"], meta)
    outputs = [(o.name, _dims(o)) for o in model.graph.output]
    output = dict(config["output"])
    try:
        output.update(match_outputs(outputs, output["decoder"], len(labels) if labels else None,
                                    output["options"], (spec["size"][0], spec["size"][1])))
    except ValueError as exc:
        raise InvalidModel(str(exc), fields={"config": [f"decoder {output['decoder']!r} mismatch"]}) from exc
    if not labels:
        count = output.get("num_classes") or 0
        labels = [str(i) for i in range(count)]
    return ModelPackage(model.SerializeToString(), list(labels), spec, output)


def _meta_labels(meta: dict[str, str]) -> list[str]:
    names = _meta_literal(meta, "names", "a list or a {index: name} dict of class names")
    if names is None:
        return []
    try:
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names, key=int)]
        if isinstance(names, list | tuple):
            return [str(n) for n in names]
    except (ValueError, TypeError):
        pass
    raise _bad_meta("names", "a list or a {index: name} dict of class names")


def _meta_literal(meta: dict[str, str], key: str, wanted: str) -> Any:
    """An Ultralytics-style metadata value (a Python or JSON literal); None where absent.

    Raises:
        InvalidModel: present but neither.
    """
    raw = meta.get(key)
    if not raw:
        return None
    if len(raw) > _MAX_META_CHARS:
        raise _bad_meta(key, wanted)
    try:
        return ast.literal_eval(raw)
    # what literal_eval raises for text that is no literal, or one nested past its limits
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise _bad_meta(key, wanted) from None


def _bad_meta(key: str, wanted: str) -> InvalidModel:
    return InvalidModel(f"the ONNX metadata {key!r} should be {wanted} (as Ultralytics writes "
                        "it); fix it, or give the same in the config (model.json or 'config')",
                        fields={"model": [f"bad metadata {key!r}"]})


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def _input_spec(model: onnx.ModelProto, cfg: dict[str, Any], meta: dict[str, str]) -> dict[str, Any]:
    initialisers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise InvalidModel(f"detserve serves models with one image input; this one has {len(inputs)}",
                           fields={"model": ["needs exactly one input"]})
    tensor = inputs[0]
    dims = _dims(tensor)
    if len(dims) != 4:
        raise InvalidModel(f"input {tensor.name!r} is {dims}; expected a 4-D image batch",
                           fields={"model": ["input must be 4-D"]})
    layout = cfg["layout"] or ("NHWC" if dims[3] == 3 and dims[1] != 3 else "NCHW")
    hw = dims[2:4] if layout == "NCHW" else dims[1:3]
    size = cfg["size"] or _meta_size(meta) or [d if isinstance(d, int) else 640 for d in hw]
    size = [size, size] if isinstance(size, int) else list(size)
    for have, want in zip(hw, size, strict=True):
        if isinstance(have, int) and have != want:
            raise InvalidModel(f"input size {size} does not fit the model's input {dims}",
                               fields={"config": ["input.size mismatch"]})
    elem = tensor.type.tensor_type.elem_type
    dtype = cfg["dtype"] or _DTYPES.get(elem)
    if dtype is None:
        raise InvalidModel(f"input {tensor.name!r} has element type {elem}; use float32 or uint8",
                           fields={"model": ["unsupported input dtype"]})
    scale = cfg["scale"] if cfg["scale"] is not None else (1 / 255 if dtype == "float32" else 1.0)
    return {"name": tensor.name, "size": size, "resize": cfg["resize"], "color": cfg["color"],
            "scale": scale, "mean": cfg["mean"] or [0.0, 0.0, 0.0], "std": cfg["std"] or [1.0, 1.0, 1.0],
            "layout": layout, "dtype": dtype, "batch": dims[0] if isinstance(dims[0], int) else None}


def _meta_size(meta: dict[str, str]) -> list[int] | None:
    wanted = "a positive integer or [height, width]"
    value = _meta_literal(meta, "imgsz", wanted)
    if value is None:
        return None
    size = [value] if isinstance(value, int) else value
    if not isinstance(size, list | tuple) or len(size) not in (1, 2) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in size):
        raise _bad_meta("imgsz", wanted)
    return [int(size[0]), int(size[-1])]


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, name))
    else:
        out[prefix or "config"] = [str(m) for m in (messages if isinstance(messages, list) else [messages])]
    return out
