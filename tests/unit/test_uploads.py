"""The fast reader of a prediction's image agrees with werkzeug's parser, and falls back to it."""

from __future__ import annotations

import io
import random

import pytest
from flask import Flask, request
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from detserve.errors import InvalidImage
from detserve_api.uploads import image_upload
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
