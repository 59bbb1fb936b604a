"""Reading the one image of a prediction request (werkzeug's multipart parser, in bounded chunks)."""

from __future__ import annotations

from flask import Request

from detserve.errors import InvalidImage
from detserve.processing.image import ACCEPTED

FIELD = "images"


def image_upload(request: Request) -> bytes:
    """The bytes of the `images` file (b"" when it is absent or empty)."""
    if request.mimetype != "multipart/form-data":
        raise InvalidImage(f"send one {ACCEPTED} image as multipart/form-data in field '{FIELD}'")
    upload = request.files.get(FIELD)
    if upload is None:
        return b""
    try:
        return upload.read()
    finally:
        upload.close()
