"""Model packages as registering reads them, and the config's settings as the pipeline then
applies them: a model whose outputs are known, run by detserve's own detector."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from detserve.errors import InvalidModel, PayloadTooLarge
from detserve.inference.standalone import local_detector
from detserve.service.demo import build_blob_detector
from detserve.service.modelconfig import MAX_SIDE
from detserve.service.packages import _MAX_META_CHARS, MAX_ZIP_ENTRIES, read_package
from support import blobs_image, constant_model, dynamic_batch_model, yolo_v8_output

LIMIT = 1 << 30
META = {"names": "{0: 'a', 1: 'b', 2: 'c'}", "imgsz": "[64, 64]"}


def zipped(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def package(model: bytes, config: dict | None = None) -> bytes:
    return zipped({"model.onnx": model, **({"model.json": json.dumps(config).encode()} if config else {})})


def with_external_weight(location: str, offset: int | None = None, length: int | None = None) -> bytes:
    model = build_blob_detector()
    weight = next(t for t in model.graph.initializer if t.name == "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.external_data.add(key="location", value=location)
    if offset is not None:
        weight.external_data.add(key="offset", value=str(offset))
    if length is not None:
        weight.external_data.add(key="length", value=str(length))
    return model.SerializeToString()


WEIGHT = numpy_helper.to_array(next(t for t in build_blob_detector().graph.initializer if t.name == "w"))
SCENE = blobs_image([("red", 20, 20, 80, 80), ("blue", 200, 200, 260, 260)])


@pytest.mark.parametrize("offset,length,blob", [
    (None, None, WEIGHT.tobytes()),
    (12, WEIGHT.nbytes, b"header bytes" + WEIGHT.tobytes() + b"and a tail"),
    (5, None, b"12345" + WEIGHT.tobytes()),
    (0, WEIGHT.nbytes, WEIGHT.tobytes() + b"x" * 40),
])
def test_external_data_is_inlined_from_its_offset_and_length(offset, length, blob):
    # given a package whose weight lives in weights.bin, at an offset and for a length
    data = zipped({"model.onnx": with_external_weight("weights.bin", offset, length), "weights.bin": blob})
    pkg = read_package(data, None, max_bytes=LIMIT)
    # then the model carries exactly those bytes, and answers as the model it came from
    inlined = next(t for t in onnx.load_from_string(pkg.onnx_bytes).graph.initializer if t.name == "w")
    assert np.array_equal(numpy_helper.to_array(inlined), WEIGHT)
    found = local_detector(data, threads=1).infer(SCENE)
    reference = local_detector(build_blob_detector().SerializeToString(), threads=1).infer(SCENE)
    assert found == reference and sorted(set(found.classes)) == ["blue", "red"]


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd", "c:/w.bin", "missing.bin"])
def test_external_data_outside_the_package_is_refused(location):
    data = zipped({"model.onnx": with_external_weight(location), "weights.bin": WEIGHT.tobytes()})
    with pytest.raises(InvalidModel, match="outside the package"):
        read_package(data, None, max_bytes=LIMIT)


def test_an_onnx_file_registers_with_its_metadata():
    pkg = read_package(build_blob_detector().SerializeToString(), None, max_bytes=LIMIT)
    assert pkg.labels == ["red", "green", "blue"]
    assert pkg.input == {"name": "images", "size": [320, 320], "resize": "letterbox", "color": "RGB",
                         "scale": pytest.approx(1 / 255), "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                         "layout": "NCHW", "dtype": "float32", "batch": 1}
    assert pkg.output["layout"] == "v8" and pkg.output["num_classes"] == 3
    assert (pkg.output["score_threshold"], pkg.output["iou_threshold"]) == (0.25, 0.45)


@pytest.mark.parametrize("data,needle,error", [
    (b"", "no model was sent", InvalidModel),
    (b"not onnx at all", "not an ONNX model", InvalidModel),
    (b"PK\x03\x04 broken", "zip is damaged", InvalidModel),
    (zipped({"weights.bin": b"0"}), "no model.onnx", InvalidModel),
    (zipped({"../evil.onnx": b"x", "model.onnx": b"x"}), "outside the package", InvalidModel),
    (b"x" * 2000, "limit", PayloadTooLarge),
])
def test_bad_packages_are_refused_saying_why(data, needle, error):
    with pytest.raises(error, match=needle):
        read_package(data, None, max_bytes=1000)


def test_a_zip_over_the_limit_when_unpacked_is_refused():
    with pytest.raises(PayloadTooLarge, match="unpacks"):
        read_package(zipped({"model.onnx": b"\0" * 5000}, zipfile.ZIP_DEFLATED), None, max_bytes=2000)


@pytest.mark.parametrize("config,needle", [
    ('{"labels": ["a", "b"]}', "2 classes"),
    ('{"output": {"decoder": "boxes"}}', "detection_boxes"),
    ('{"input": {"size": 100}}', "does not fit"),
    ('{"input": {"resize": "crop"}}', "invalid"),
    ("[1, 2]", "JSON object"),
    ("{oops", "not valid JSON"),
])
def test_a_config_that_does_not_fit_is_refused(config, needle):
    with pytest.raises(InvalidModel, match=needle):
        read_package(build_blob_detector().SerializeToString(), config, max_bytes=LIMIT)


# ---- the config's settings, as the pipeline applies them ---------------------------------------

# three boxes on a 64x64 input: two of class 0 overlapping with IoU 0.6, one of class 1
BOXES = [(20.0, 20.0, 20.0, 20.0), (24.0, 20.0, 20.0, 20.0), (48.0, 48.0, 10.0, 10.0)]
IOU = 16 * 20 / (2 * 400 - 16 * 20)  # of the first two: 0.5


def known(config: dict) -> list:
    model = constant_model(yolo_v8_output(BOXES, [0, 0, 1], [0.9, 0.8, 0.7], nc=3), meta=META)
    found = local_detector(package(model, config), threads=1).infer(blobs_image([], 64, 64))
    return list(zip(found.classes, found.scores, strict=True))


def test_defaults_suppress_the_overlapping_box():
    assert known({}) == [("a", 0.9), ("b", 0.7)]


def test_iou_threshold_decides_which_overlaps_are_suppressed():
    assert known({"output": {"iou_threshold": IOU + 0.05}}) == [("a", 0.9), ("a", 0.8), ("b", 0.7)]
    assert known({"output": {"iou_threshold": IOU - 0.05}}) == [("a", 0.9), ("b", 0.7)]


def test_score_threshold_drops_lower_scores():
    assert known({"output": {"score_threshold": 0.75}}) == [("a", 0.9)]
    assert known({"output": {"score_threshold": 0.95}}) == []


def test_max_detections_keeps_the_best():
    assert known({"output": {"max_detections": 1, "iou_threshold": 0.9}}) == [("a", 0.9)]
    assert known({"output": {"max_detections": 2, "iou_threshold": 0.9}}) == [("a", 0.9), ("a", 0.8)]


def test_class_offset_shifts_the_labels():
    # a model that counts classes from 1 (0 is background): offset -1 maps its class 1 to "a"
    assert known({"output": {"class_offset": 1}}) == [("b", 0.9), ("c", 0.7)]
    assert known({"output": {"class_offset": 2}}) == [("c", 0.9), ("3", 0.7)]


def quadrant_scores(config: dict) -> dict[str, float]:
    """The dynamic model scores each class by the mean of one input channel over a quadrant;
    the top-left quadrant of the image is pure red."""
    found = local_detector(package(dynamic_batch_model(), config), threads=1).infer(
        blobs_image([("red", 0, 0, 32, 32)], 64, 64))
    boxes = np.asarray(found.boxes)
    top_left = [i for i, b in enumerate(boxes) if b[2] <= 32.5 and b[3] <= 32.5]
    return {found.classes[i]: found.scores[i] for i in top_left}


def test_colour_order_rgb_and_bgr():
    # red = (230, 20, 20): in RGB order channel 0 is high; in BGR order channel 2 is
    rgb = quadrant_scores({"output": {"score_threshold": 0.5}})
    bgr = quadrant_scores({"input": {"color": "BGR"}, "output": {"score_threshold": 0.5}})
    assert rgb == {"c0": pytest.approx(230 / 255, abs=1e-4)}
    assert bgr == {"c2": pytest.approx(230 / 255, abs=1e-4)}


def test_mean_and_std_normalise_each_channel():
    cfg = {"input": {"mean": [0.5, 0.1, 0.0], "std": [0.25, 1.0, 2.0]}, "output": {"score_threshold": 0.0}}
    found = quadrant_scores(cfg)
    # the winning class per anchor is the largest normalised channel: (230/255 - 0.5) / 0.25
    assert found == {"c0": pytest.approx((230 / 255 - 0.5) / 0.25, abs=1e-4)}
    scaled = quadrant_scores({"input": {"scale": 1.0}, "output": {"score_threshold": 0.0}})
    assert scaled == {"c0": pytest.approx(230.0, abs=1e-3)}


def symbolic_hw(model: bytes) -> bytes:
    """The same model with a symbolic input height and width (as dynamic exports have)."""
    proto = onnx.load_from_string(model)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for d, name in ((dims[2], "H"), (dims[3], "W")):
        d.ClearField("dim_value")
        d.dim_param = name
    return proto.SerializeToString()


OUT = yolo_v8_output([(32.0, 32.0, 8.0, 8.0)], [0], [0.9], nc=3)


def test_the_input_size_comes_from_config_metadata_or_the_model():
    # no imgsz: the model's own fixed size
    plain = read_package(constant_model(OUT, size=64, meta={"names": META["names"]}), None, max_bytes=LIMIT)
    assert plain.input["size"] == [64, 64] and plain.labels == ["a", "b", "c"]
    # symbolic height and width: imgsz when the metadata has it, else 640
    dynamic = symbolic_hw(constant_model(OUT, size=64, meta={"names": META["names"], "imgsz": "96"}))
    assert read_package(dynamic, None, max_bytes=LIMIT).input["size"] == [96, 96]
    bare = symbolic_hw(constant_model(OUT, size=64, meta={"names": META["names"]}))
    assert read_package(bare, None, max_bytes=LIMIT).input["size"] == [640, 640]
    assert read_package(bare, '{"input": {"size": [48, 80]}}', max_bytes=LIMIT).input["size"] == [48, 80]


def test_the_layout_is_read_from_where_the_three_channels_are():
    nhwc = read_package(constant_model(OUT, size=64, meta=META, layout="NHWC"), None, max_bytes=LIMIT)
    assert nhwc.input["layout"] == "NHWC" and nhwc.input["size"] == [64, 64]
    nchw = read_package(constant_model(OUT, size=64, meta=META), None, max_bytes=LIMIT)
    assert nchw.input["layout"] == "NCHW"
    tiny = read_package(constant_model(OUT, size=3, meta={"names": META["names"]}), None, max_bytes=LIMIT)
    assert tiny.input["layout"] == "NCHW"  # [1, 3, 3, 3]: channels first, as most exports are
    found = local_detector(constant_model(OUT, size=64, meta=META, layout="NHWC"), threads=1).infer(
        blobs_image([], 64, 64))
    assert found.classes == ["a"]


@pytest.mark.parametrize("names,labels", [
    ("{0: 'cat', 1: 'dog', 2: 'eel'}", ["cat", "dog", "eel"]),  # as Ultralytics writes them
    ('["cat", "dog", "eel"]', ["cat", "dog", "eel"]),
    ('{"0": "cat", "1": "dog", "2": "eel"}', ["cat", "dog", "eel"]),
    ("", ["0", "1", "2"]),  # none: the classes are numbered
])
def test_labels_from_the_metadata(names, labels):
    meta = {"names": names, "imgsz": "[64, 64]"} if names else {"imgsz": "[64, 64]"}
    assert read_package(constant_model(OUT, meta=meta), None, max_bytes=LIMIT).labels == labels


@pytest.mark.parametrize("names", [
    "cat, dog, eel",  # unreadable
    "{0: 'cat', 1: 'dog'",  # cut short (was an uncaught JSONDecodeError: a 500)
    "{'a': 'cat'}",  # keys that are not class numbers
    "7",
])
def test_metadata_names_that_do_not_parse_are_refused_by_name(names):
    # a 400 that says which metadata is wrong and how to fix it (issue 12), not labels made up
    with pytest.raises(InvalidModel, match="'names'"):
        read_package(constant_model(OUT, meta={"names": names, "imgsz": "[64, 64]"}), None,
                     max_bytes=LIMIT)


def test_config_errors_name_their_fields():
    with pytest.raises(InvalidModel) as exc:
        read_package(build_blob_detector().SerializeToString(),
                     '{"labels": "red", "input": {"resize": "crop", "mean": [1]}}', max_bytes=LIMIT)
    fields = exc.value.fields
    assert set(fields) == {"labels", "input.resize", "input.mean"}
    assert fields["input.resize"] == ["Must be one of: letterbox, stretch."]
    assert all(isinstance(m, list) and m and all(isinstance(x, str) for x in m) for m in fields.values())


def test_a_model_onnx_checker_refuses_is_invalid():
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing_input"], ["output0"])], "bad",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 7, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InvalidModel, match="onnx.checker refused"):
        read_package(model.SerializeToString(), None, max_bytes=LIMIT)


def test_a_tensor_after_inline_ones_is_inlined_too():
    # the last initializer keeps its data outside: every tensor before it is looked past
    model = build_blob_detector()
    boxes = model.graph.initializer[-1]
    blob = numpy_helper.to_array(boxes).tobytes()
    boxes.data_location = TensorProto.EXTERNAL
    boxes.ClearField("raw_data")
    boxes.ClearField("float_data")
    boxes.external_data.add(key="location", value="boxes.bin")
    data = zipped({"model.onnx": model.SerializeToString(), "boxes.bin": blob})
    found = local_detector(data, threads=1).infer(SCENE)
    assert found == local_detector(build_blob_detector().SerializeToString(), threads=1).infer(SCENE)


def test_a_model_or_zip_of_exactly_the_limit_is_accepted():
    model = build_blob_detector().SerializeToString()
    assert read_package(model, None, max_bytes=len(model)).labels == ["red", "green", "blue"]
    archive = zipped({"model.onnx": model}, zipfile.ZIP_DEFLATED)  # unpacks to exactly the limit
    assert len(archive) < len(model)
    assert read_package(archive, None, max_bytes=len(model)).labels == ["red", "green", "blue"]


# ---- edges the mutation run (make mutate) found untested ---------------------------------------


@pytest.mark.parametrize("imgsz", ["0", "-5", "3.5", "True", "[64, 64, 64]", "{1: 64}", str(MAX_SIDE + 1)])
def test_metadata_imgsz_that_is_no_size_is_refused_by_name(imgsz):
    model = symbolic_hw(constant_model(OUT, size=64, meta={"names": META["names"], "imgsz": imgsz}))
    with pytest.raises(InvalidModel, match="'imgsz'"):
        read_package(model, None, max_bytes=LIMIT)


def test_metadata_imgsz_of_the_largest_side_is_accepted():
    model = symbolic_hw(constant_model(OUT, size=64, meta={"names": META["names"], "imgsz": str(MAX_SIDE)}))
    assert read_package(model, None, max_bytes=LIMIT).input["size"] == [MAX_SIDE, MAX_SIDE]


def test_a_zip_of_exactly_the_most_entries_is_read_and_one_more_is_refused():
    model = constant_model(OUT, size=64, meta=META)
    fill = {f"w/{i}": b"" for i in range(MAX_ZIP_ENTRIES - 1)}
    most = zipped({"model.onnx": model, **fill})
    assert read_package(most, None, max_bytes=LIMIT).labels == ["a", "b", "c"]
    with pytest.raises(InvalidModel, match="entries"):
        read_package(zipped({"model.onnx": model, **fill, "w/extra": b""}), None, max_bytes=LIMIT)


def test_metadata_names_of_exactly_the_longest_text_are_read_and_longer_refused():
    names = "['a', 'b', 'c']"
    longest = names[:-1] + " " * (_MAX_META_CHARS - len(names)) + "]"
    assert len(longest) == _MAX_META_CHARS
    assert read_package(constant_model(OUT, size=64, meta={"names": longest}), None,
                        max_bytes=LIMIT).labels == ["a", "b", "c"]
    with pytest.raises(InvalidModel, match="'names'"):
        read_package(constant_model(OUT, size=64, meta={"names": longest + " "}), None, max_bytes=LIMIT)


def test_the_checkers_refusal_quotes_its_reason():
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing_input"], ["output0"])], "bad",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 7, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InvalidModel, match="onnx.checker refused the model: .*missing_input"):
        read_package(model.SerializeToString(), None, max_bytes=LIMIT)


def patched_central_entry(data: bytes, name: bytes, offset: int, value: bytes) -> bytes:
    """The zip with `value` written at `offset` of `name`'s central-directory header."""
    at = data.index(b"PK\x01\x02")
    while data[at + 46:at + 46 + len(name)] != name:
        at = data.index(b"PK\x01\x02", at + 4)
    return data[:at + offset] + value + data[at + offset + len(value):]


def test_a_zip_entry_of_an_unknown_compression_method_is_refused_saying_so():
    data = zipped({"model.onnx": constant_model(OUT, size=64, meta=META)})
    method_99 = patched_central_entry(data, b"model.onnx", 10, (99).to_bytes(2, "little"))
    with pytest.raises(InvalidModel, match="damaged or uses a compression"):
        read_package(method_99, None, max_bytes=LIMIT)


def test_a_zip_entry_cut_short_is_refused_saying_so():
    data = zipped({"model.onnx": constant_model(OUT, size=64, meta=META)})
    longer = (len(data) * 2).to_bytes(4, "little")  # sizes past the end of the file
    cut = patched_central_entry(data, b"model.onnx", 20, longer + longer)  # compressed, then full size
    with pytest.raises(InvalidModel, match="damaged or uses a compression"):
        read_package(cut, None, max_bytes=LIMIT)
