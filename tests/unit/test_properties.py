"""Property-based checks (Hypothesis, derandomized so every run tries the same examples): NMS and
the decoder's thresholds, letterbox and its inverse, and the readers of uploads and image headers
against the libraries they stand in for (werkzeug's multipart parser, Pillow's decoder)."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
from flask import Flask, request
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from detserve.errors import ImageTooLarge, InvalidImage
from detserve.processing import image, postprocess, preprocess
from detserve_api.uploads import read_upload

# derandomized: every run tries the same examples; `make mutate` asks for fewer, to fit its budget
PROPERTY = settings(derandomize=True, database=None, deadline=None,
                    max_examples=int(os.environ.get("DETSERVE_PROPERTY_EXAMPLES", "150")),
                    suppress_health_check=[HealthCheck.too_slow])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two x1,y1,x2,y2 boxes, in float64 (independent of the code under test)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ---- NMS and the decoder's thresholds ------------------------------------------------------

NC = 3
candidate = st.tuples(st.integers(0, 64), st.integers(0, 64), st.integers(1, 40), st.integers(1, 40),
                      st.integers(0, NC - 1), st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.5, 0.7, 0.9, 0.95]))


@PROPERTY
@given(cands=st.lists(candidate, max_size=40), score_threshold=st.sampled_from([0.0, 0.25, 0.5, 0.8]),
       iou_threshold=st.sampled_from([0.0, 0.3, 0.45, 0.7, 1.0]), max_detections=st.integers(1, 50))
# boxes around the origin, reaching into negative coordinates: NMS once shifted classes apart by
# less than the boxes span and suppressed across classes
@example(cands=[(0, 0, 40, 40, 0, 0.9), (0, 0, 40, 40, 1, 0.8)], score_threshold=0.25,
         iou_threshold=0.0, max_detections=50)
def test_nms_invariants(cands, score_threshold, iou_threshold, max_detections):
    # given a v8-layout output whose anchors each carry one class score
    raw = np.zeros((1, 4 + NC, max(1, len(cands))), dtype=np.float32)
    for i, (cx, cy, w, h, c, s) in enumerate(cands):
        raw[0, :4, i] = (cx, cy, w, h)
        raw[0, 4 + c, i] = s
    spec = {"layout": "v8", "score_threshold": score_threshold, "iou_threshold": iou_threshold,
            "max_detections": max_detections, "class_offset": 0}
    boxes, scores, classes = postprocess.decode([raw], spec, (64, 64))
    kept = list(zip(boxes.tolist(), scores.tolist(), classes.tolist(), strict=True))
    # then: at most max_detections, every one over the score threshold, highest score first
    assert len(kept) <= max_detections
    assert all(s >= score_threshold for _, s, _ in kept)
    assert all(a[1] >= b[1] for a, b in zip(kept, kept[1:], strict=False))
    # no two kept boxes of one class overlap above the threshold
    for i, (bi, _, ci) in enumerate(kept):
        for bj, _, cj in kept[i + 1:]:
            assert ci != cj or iou(np.asarray(bi), np.asarray(bj)) <= iou_threshold + 1e-5
    # every box dropped was below the score threshold, overlaps a kept box of its class with at
    # least its score above the threshold, or fell past max_detections
    for cx, cy, w, h, c, s in cands:
        box = np.asarray([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        if s < score_threshold or len(kept) == max_detections:
            continue
        if any(k == c and np.allclose(b, box) and ks == pytest.approx(s) for b, ks, k in kept):
            continue
        assert any(k == c and ks >= s - 1e-6 and iou(np.asarray(b), box) > iou_threshold - 1e-5
                   for b, ks, k in kept), (box, c, s)


@PROPERTY
@given(cands=st.lists(candidate, min_size=1, max_size=20), offset=st.integers(-5, 80))
def test_class_offset_shifts_every_class_and_nothing_else(cands, offset):
    raw = np.zeros((1, 4 + NC, len(cands)), dtype=np.float32)
    for i, (cx, cy, w, h, c, s) in enumerate(cands):
        raw[0, :4, i] = (cx, cy, w, h)
        raw[0, 4 + c, i] = s
    spec = {"layout": "v8", "score_threshold": 0.25, "iou_threshold": 0.45, "max_detections": 100}
    plain = postprocess.decode([raw], spec, (64, 64))
    shifted = postprocess.decode([raw], {**spec, "class_offset": offset}, (64, 64))
    assert np.array_equal(plain[0], shifted[0]) and np.array_equal(plain[1], shifted[1])
    assert np.array_equal(plain[2] + offset, shifted[2])


# ---- letterbox and its inverse --------------------------------------------------------------

@PROPERTY
@given(w=st.integers(1, 900), h=st.integers(1, 900), in_h=st.integers(8, 320), in_w=st.integers(8, 320),
       mode=st.sampled_from(["letterbox", "stretch"]), scale=st.sampled_from([1.0, 2.0, 4.0, 8.0]))
def test_letterbox_then_the_inverse_mapping_gives_back_the_image(w, h, in_h, in_w, mode, scale):
    # given a decoded image (of an original `scale` times larger), resized into the model's input
    decoded = Image.new("RGB", (w, h), (200, 10, 10))
    pixels, geo = preprocess.resize(decoded, (in_h, in_w), mode)
    assert pixels.shape == (in_h, in_w, 3)
    # the image occupies exactly the rectangle the geometry says, the rest is padding
    new_w, new_h = round(w * geo.gain_x), round(h * geo.gain_y)
    x0, y0 = int(geo.pad_x), int(geo.pad_y)
    assert 1 <= new_w <= in_w and 1 <= new_h <= in_h and x0 >= 0 and y0 >= 0
    assert (pixels[y0:y0 + new_h, x0:x0 + new_w] == (200, 10, 10)).all()
    assert (pixels[:y0] == 114).all() and (pixels[y0 + new_h:] == 114).all()
    assert (pixels[:, :x0] == 114).all() and (pixels[:, x0 + new_w:] == 114).all()
    if mode == "letterbox":  # one gain for both sides: the aspect ratio is kept, to a pixel
        gain = min(in_h / h, in_w / w)
        assert (new_w, new_h) == (max(1, round(w * gain)), max(1, round(h * gain)))
        assert new_w == in_w or new_h == in_h or 1 in (new_w, new_h)
        assert (x0, y0) == ((in_w - new_w) // 2, (in_h - new_h) // 2)  # centred
    else:
        assert (new_w, new_h, x0, y0) == (in_w, in_h, 0, 0)
    # the inverse mapping takes that rectangle, and any point in it, back to the original
    ow, oh = w * scale, h * scale
    rect = np.asarray([[x0, y0, x0 + new_w, y0 + new_h],
                       [x0 + new_w / 3, y0 + new_h / 2, x0 + new_w, y0 + new_h]], dtype=np.float32)
    back = postprocess.to_image(rect, geo, scale, int(ow), int(oh))
    assert back[0] == pytest.approx([0, 0, oh, ow], rel=1e-4, abs=1e-3)
    assert back[1] == pytest.approx([oh / 2, ow / 3, oh, ow], rel=1e-4, abs=1e-3)


# ---- the upload reader against werkzeug -----------------------------------------------------

app = Flask(__name__)
BOUNDARY_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
tricky = st.sampled_from([b"\r\n", b"--", b"\r\n--", b"\r\n\r\n", b"\0", b"\xff\xd8\xff", b"x", b"-"])
payload = st.lists(st.one_of(tricky, st.binary(max_size=30)), max_size=12).map(b"".join)
part = st.tuples(st.sampled_from(["images", "other", "image", "Images", "note"]), payload,
                 st.sampled_from(["a.jpg", "photo.png", "", None]),
                 st.sampled_from(["Content-Disposition", "content-disposition", "CONTENT-DISPOSITION"]),
                 st.booleans())


def multipart(boundary: str, parts: list, preamble: bytes, epilogue: bytes) -> bytes:
    out = [preamble]
    for name, data, filename, header, typed in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\n{header}: {disposition}\r\n"
        if typed:
            head += "Content-Type: application/octet-stream\r\n"
        out.append(head.encode("latin-1") + b"\r\n" + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode("latin-1") + epilogue)
    return b"".join(out)


@PROPERTY
@given(boundary=st.text(BOUNDARY_CHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" ")),
       quoted=st.booleans(), parts=st.lists(part, max_size=5),
       preamble=st.sampled_from([b"", b"preamble\r\n"]), epilogue=st.sampled_from([b"", b"epilogue"]))
def test_the_upload_reader_agrees_with_werkzeug(boundary, quoted, parts, preamble, epilogue):
    if not quoted and any(c in boundary for c in "()+,/:=? "):
        quoted = True  # those characters need quotes in a header parameter
    # one file in `images` is the contract: the oracle is the first file werkzeug finds there
    files = [p for p in parts if p[0] == "images" and p[2]]
    parts = [p for p in parts if not (p[0] == "images" and not p[2])]
    if len(files) > 1:
        parts = [p for p in parts if p[0] != "images"] + [files[0]]
    body = multipart(boundary, parts, preamble, epilogue)
    ctype = f'multipart/form-data; boundary={f"{chr(34)}{boundary}{chr(34)}" if quoted else boundary}'
    with app.test_request_context("/", method="POST", data=body, content_type=ctype):
        expected = request.files["images"].read() if "images" in request.files else b""
    got = read_upload({"CONTENT_TYPE": ctype, "wsgi.input": io.BytesIO(body)})
    assert got.image == expected


# ---- the image header check against Pillow's decoder ----------------------------------------

LIMITS = {"max_bytes": 1 << 24, "max_pixels": 1 << 24}


def encoded_image(fmt: str, w: int, h: int, mode: str, options: dict) -> bytes:
    img = Image.new(mode, (w, h), None)
    img.putpixel((0, 0), 255 if mode in ("L", "1", "P", "I;16") else (255,) * len(mode))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def pillow_decodes(data: bytes) -> tuple[str, int, int] | None:
    """Pillow's own verdict: the format and size when it decodes every pixel, else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return img.format, *img.size  # type: ignore[return-value]
    except Exception:
        return None


def edited(data: bytes, cut: int | None, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data if cut is None else data[: max(0, len(data) - cut)])
    for pos, value in flips:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


source = st.one_of(
    st.tuples(st.just("PNG"), st.sampled_from(["RGB", "RGBA", "L", "P", "I;16"]),
              st.sampled_from([{}, {"optimize": True}, {"compress_level": 0}])),
    st.tuples(st.just("JPEG"), st.sampled_from(["RGB", "L", "CMYK"]),
              st.sampled_from([{}, {"progressive": True}, {"quality": 20},
                               {"exif": b"Exif\0\0" + b"\0" * 40}])),
    st.tuples(st.just("BMP"), st.sampled_from(["RGB", "L", "1", "P"]), st.just({})),
)


@PROPERTY
@given(src=source, w=st.integers(1, 70), h=st.integers(1, 70),
       cut=st.one_of(st.none(), st.integers(1, 400)),
       flips=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255)), max_size=2))
def test_the_image_check_agrees_with_pillows_decode(src, w, h, cut, flips):
    fmt, mode, options = src
    data = edited(encoded_image(fmt, w, h, mode, options), cut, flips)
    truth = pillow_decodes(data)
    try:
        verdict: tuple[str, int, int] | None = image.inspect(data, **LIMITS)
    except (InvalidImage, ImageTooLarge):
        verdict = None
    try:
        decoded = image.decode(data, **LIMITS)
        full: tuple[str, int, int] | None = (verdict[0] if verdict else "?", decoded.width, decoded.height)
    except (InvalidImage, ImageTooLarge):
        full = None
    if truth is not None and truth[0] in ("PNG", "JPEG", "BMP"):
        # what Pillow decodes, the check passes with the same size, and the decoder decodes
        assert verdict == truth and full == truth
    else:
        # what Pillow cannot decode (or is not one of ours), the decoder refuses; the cheap
        # check may pass it only when its header is whole (damage past the header is the
        # decoder's to find)
        assert full is None
