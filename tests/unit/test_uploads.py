"""Reading a prediction's image: the `images` part of a multipart body, whatever else it holds."""

from __future__ import annotations

import io

import pytest
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from detserve.errors import InvalidImage
from detserve_api.uploads import Upload, read_upload


def upload(body: bytes, content_type: str) -> Upload:
    return read_upload({"CONTENT_TYPE": content_type, "wsgi.input": io.BytesIO(body)})


def read(body: bytes, content_type: str) -> bytes:
    return upload(body, content_type).image


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


def test_text_fields_are_the_options_first_one_wins():
    body, ctype = encoded({"score_threshold": "0.5", "classes": "cat,dog",
                           "images": FileStorage(io.BytesIO(b"img"), "a.jpg")})
    got = upload(body, ctype)
    assert got.image == b"img" and got.fields == {"score_threshold": "0.5", "classes": "cat,dog"}
    twice = encode_multipart(MultiDict([("score_threshold", "0.5"), ("score_threshold", "0.7")]))
    got = upload(twice[1], f"multipart/form-data; boundary={twice[0]}")
    assert got.fields == {"score_threshold": "0.5"} and got.image == b""


def test_the_first_images_file_is_taken_even_when_empty():
    part = '--b\r\nContent-Disposition: form-data; name="images"; filename="{}"\r\n\r\n{}\r\n'
    body = (part.format("a.jpg", "") + part.format("b.jpg", "second") + "--b--\r\n").encode()
    assert read(body, "multipart/form-data; boundary=b") == b""


@pytest.mark.parametrize("body", [b"", b"--b\r\nno end", b"garbage without boundary"])
def test_a_broken_body_is_a_400_naming_multipart(body):
    with pytest.raises(InvalidImage, match="not valid multipart/form-data"):
        read(body, "multipart/form-data; boundary=b")


def test_too_many_parts_are_refused():
    body = b"".join(b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n'
                    for _ in range(100)) + b"--b--\r\n"
    with pytest.raises(InvalidImage, match="not valid multipart"):
        read(body, "multipart/form-data; boundary=b")


def test_no_boundary_is_refused():
    with pytest.raises(InvalidImage, match="boundary"):
        read(b"--b--\r\n", "multipart/form-data")
