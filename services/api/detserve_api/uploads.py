"""Reading a prediction's upload: the one image in the `images` part of a multipart body, and the
other fields (the answer options), with multipart's push parser as the body arrives.

Only the prediction routes read uploads this way (the model upload, up to gigabytes, is spooled
to disk by werkzeug); the body's size is bounded before this by the entrance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import multipart
from werkzeug.http import parse_options_header

from detserve.errors import InvalidImage
from detserve.processing.image import ACCEPTED

FIELD = "images"
CHUNK = 64 * 1024  # read from the socket this much at a time
MAX_PARTS = 64  # the image and a few options; a body of thousands of empty parts is refused
SHAPE = f"send one {ACCEPTED} image as multipart/form-data in field '{FIELD}'"


@dataclass
class Upload:
    image: bytes = b""  # the first file in `images`; b"" when there is none
    fields: dict[str, str] = field(default_factory=dict)  # the other text parts, first of each
    found: bool = False  # an `images` file was read (it may be empty)


def read_upload(environ: dict[str, Any]) -> Upload:
    """The request's upload, read to the end of its body.

    Raises:
        InvalidImage: not multipart/form-data, or a body that is not valid multipart.
    """
    mimetype, options = parse_options_header(environ.get("CONTENT_TYPE", ""))
    boundary = options.get("boundary", "")
    if mimetype != "multipart/form-data" or not boundary:
        raise InvalidImage(f"{SHAPE} (with its boundary in the Content-Type header)")
    stream, upload = environ["wsgi.input"], Upload()
    try:
        with multipart.PushMultipartParser(boundary, max_segment_count=MAX_PARTS) as parser:
            part: multipart.MultipartSegment | None = None
            chunks: list[bytes] = []
            while not parser.closed:
                chunk = stream.read(CHUNK)
                for event in parser.parse(chunk):
                    if isinstance(event, multipart.MultipartSegment):
                        part, chunks = event, []
                    elif event:
                        chunks.append(event)
                    elif part is not None:
                        _keep(upload, part, b"".join(chunks))
                if not chunk:
                    break
    except multipart.MultipartError as exc:
        raise InvalidImage(f"the body is not valid multipart/form-data ({exc}); {SHAPE}") from exc
    return upload


def _keep(upload: Upload, part: multipart.MultipartSegment, data: bytes) -> None:
    """A file goes to `images` (the first one only); a text part to the fields (first wins)."""
    if part.filename is not None:
        if part.name == FIELD and not upload.found:
            upload.image, upload.found = data, True
    elif part.name:
        upload.fields.setdefault(part.name, data.decode("utf-8", "replace"))
