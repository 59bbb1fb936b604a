"""The fast reader of a prediction's image agrees with werkzeug's parser, and falls back to it."""

from __future__ import annotations

import io
import random

import pytest
from flask import Flask, request
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.http import parse_options_header
from werkzeug.test import encode_multipart

from detserve.errors import InvalidImage
from detserve_api.uploads import _part, image_upload, multipart_boundary
from detserve_api.uploads import split_image as _split

app = Flask(__name__)


def read(body: bytes, content_type: str) -> bytes:
    with app.test_request_context("/", method="POST", data=body, content_type=content_type):
        return image_upload(request)


def encoded(fields: dict) -> tuple[bytes, str]:
    boundary, body = encode_multipart(MultiDict(fields))
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("payload", [b"\xff\xd8\xff" + bytes(range(256)) * 900, b"x", b"\r\n--\r\n"])
def test_fast_path_returns_the_file(payload):
    body, ctype = encoded({"note": "hi", "images": FileStorage(io.BytesIO(payload), "a.jpg")})
    boundary = ctype.split("boundary=")[1].encode()
    assert _split(body, boundary) == payload
    assert read(body, ctype) == payload


def test_missing_field_is_empty():
    body, ctype = encoded({"other": FileStorage(io.BytesIO(b"abc"), "a.jpg")})
    assert read(body, ctype) == b""


def test_not_multipart_is_refused():
    with pytest.raises(InvalidImage, match="multipart/form-data"):
        read(b"\xff\xd8\xff", "image/jpeg")


def test_unusual_bodies_fall_back_to_werkzeug():
    body, ctype = encoded({"images": FileStorage(io.BytesIO(b"data"), "a.jpg")})
    preamble = b"this is a preamble\r\n" + body
    assert _split(preamble, ctype.split("boundary=")[1].encode()) is None
    assert read(preamble, ctype) == b"data"


@pytest.mark.parametrize("fields", [
    {"images": b"\r\n\r\nA"},
    {"a": b"1", "b": b"\r\n\r\n2", "images": b"IMG"},
    {"images": b"IMG", "z": b"--"},
    {"a": b"1", "z": b"2"},
])
def test_fast_path_agrees_with_werkzeug_wherever_the_image_is(fields):
    body, ctype = encoded({k: FileStorage(io.BytesIO(v), f"{k}.bin") for k, v in fields.items()})
    boundary = ctype.split("boundary=")[1].encode()
    assert _split(body, boundary) == fields.get("images", b"")
    cut = body[:body.rfind(b"--")]  # no closing delimiter: not for the fast path
    assert _split(cut, boundary) is None


def test_fast_path_agrees_with_werkzeug_on_random_bodies():
    rng = random.Random(7)
    pieces = [b"\r\n", b"--", b"\r\n--", b"\r\n\r\n", b"x", b"\xff\xd8", b"name=\"images\""]
    for _ in range(300):
        names = rng.sample(["images", "a", "b", "config", "c"], rng.randint(0, 4))
        fields = {n: b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) for n in names}
        body, ctype = encoded({k: FileStorage(io.BytesIO(v), f"{k}.bin") for k, v in fields.items()})
        found = _split(body, ctype.split("boundary=")[1].encode())
        assert found == fields.get("images", b""), fields
        assert read(body, ctype) == fields.get("images", b"")


def _werkzeug_boundary(content_type: str) -> bytes | None:
    mimetype, options = parse_options_header(content_type)
    if mimetype != "multipart/form-data" or not options.get("boundary"):
        return None
    return options["boundary"].encode("latin-1")


def test_headers_read_without_werkzeug_read_as_werkzeug_reads_them():
    """The usual Content-Type and Content-Disposition forms skip werkzeug's parser: on these and
    on random variations of them the result is what werkzeug's parser gives."""
    rng = random.Random(11)
    alphabet = "aZ09'()+_,./:=?- \"\\;%*\t"
    types = ["multipart/form-data; boundary=abc", "Multipart/Form-Data;boundary=\"a b\"",
             "multipart/form-data; boundary=\"abc \"", "multipart/form-data; boundary=",
             "multipart/form-data; boundary=a; charset=utf-8", "multipart/mixed; boundary=a",
             "multipart/form-data; boundary=" + "x" * 71, "multipart/form-data; boundary=a=b"]
    types += ["multipart/form-data; boundary=" + "".join(rng.choices(alphabet, k=rng.randint(0, 8)))
              for _ in range(400)]
    for content_type in types:
        assert multipart_boundary(content_type) == _werkzeug_boundary(content_type), content_type
    names = ['images', 'a b', '', 'images"', 'x;y', 'IMAGES', 'images\\', "images'"]
    names += ["".join(rng.choices(alphabet, k=rng.randint(0, 6))) for _ in range(400)]
    for name in names:
        for form in (f'form-data; name="{name}"', f'form-data; NAME="{name}"',
                     f'form-data; name="{name}"; filename="a.jpg"',
                     f'Form-Data;name="{name}";filename="{name}"', f"form-data; name={name}"):
            head = f"Content-Disposition: {form}".encode("latin-1")
            body = b"--b\r\n" + head + b"\r\n\r\nIMG\r\n--b--\r\n"
            wanted = parse_options_header(form)[1].get("name")
            assert _part(body, 3, body.rfind(b"\r\n--b")) == \
                (wanted, b"IMG" if wanted == "images" else b""), form
            assert _split(body, b"b") == (b"IMG" if wanted == "images" else b""), form
