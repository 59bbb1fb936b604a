"""Reading a prediction's image: the `images` part of a multipart body, whatever else it holds."""

from __future__ import annotations

import io

import pytest
from flask import Flask, request
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from detserve.errors import InvalidImage
from detserve_api.uploads import image_upload

app = Flask(__name__)


def read(body: bytes, content_type: str) -> bytes:
    with app.test_request_context("/", method="POST", data=body, content_type=content_type):
        return image_upload(request)


def encoded(fields: dict) -> tuple[bytes, str]:
    boundary, body = encode_multipart(MultiDict(fields))
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("payload", [b"\xff\xd8\xff" + bytes(range(256)) * 900, b"x", b"\r\n--\r\n"])
@pytest.mark.parametrize("others", [{}, {"note": b"hi"}, {"a": b"\r\n\r\n2", "z": b"--"}])
def test_the_image_part_is_read_whole(payload, others):
    fields = {k: FileStorage(io.BytesIO(v), f"{k}.bin") for k, v in others.items()}
    body, ctype = encoded({**fields, "images": FileStorage(io.BytesIO(payload), "a.jpg")})
    assert read(body, ctype) == payload


def test_a_preamble_is_ignored():
    body, ctype = encoded({"images": FileStorage(io.BytesIO(b"data"), "a.jpg")})
    assert read(b"this is a preamble\r\n" + body, ctype) == b"data"


def test_missing_field_is_empty():
    body, ctype = encoded({"other": FileStorage(io.BytesIO(b"abc"), "a.jpg")})
    assert read(body, ctype) == b""


@pytest.mark.parametrize("ctype", ["image/jpeg", "application/json", ""])
def test_not_multipart_is_refused(ctype):
    with pytest.raises(InvalidImage, match="multipart/form-data"):
        read(b"\xff\xd8\xff", ctype)
