"""Images built to fool a size check: headers that lie, contradict each other or claim a size the
pixels never had. Each must end as 400 invalid_image or 413, never 500, never a huge decode."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from support import image_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ihdr(width: int, height: int, colour: int = 0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))


def grey_rows(width: int, rows: int) -> bytes:
    """Filter byte + zeros per row, compressed: tiny on the wire, width*rows pixels decoded."""
    return zlib.compress(b"\0" * ((width + 1) * rows), 9)


def png_two_ihdr(small: int, big: int) -> bytes:
    """The first IHDR says small x small, the second big x big, with all of big's rows: a reader
    of the first header sees a thumbnail; a decoder that honours the second decodes big*big."""
    return (PNG_MAGIC + ihdr(small, small) + ihdr(big, big)
            + chunk(b"IDAT", grey_rows(big, big)) + chunk(b"IEND", b""))


def png_ihdr_after_idat(small: int, big: int) -> bytes:
    """A second, bigger IHDR after the pixel data."""
    return (PNG_MAGIC + ihdr(small, small) + chunk(b"IDAT", grey_rows(small, small))
            + ihdr(big, big) + chunk(b"IEND", b""))


def apng(canvas: int, frame: int) -> bytes:
    """An APNG whose first frame control says frame x frame on a canvas x canvas image."""
    actl = chunk(b"acTL", struct.pack(">II", 1, 0))
    fctl = chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, frame, frame, 0, 0, 1, 10, 0, 0))
    return (PNG_MAGIC + ihdr(canvas, canvas) + actl + fctl
            + chunk(b"IDAT", grey_rows(canvas, min(canvas, 64))) + chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    data = bytearray(image_bytes(16, 16, "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_two_frames(width: int, height: int) -> bytes:
    """A real 16x16 JPEG with a second frame header, claiming width x height, before the scan."""
    data = image_bytes(16, 16, "JPEG")
    sos = data.index(b"\xff\xda")
    sof = data.index(b"\xff\xc0")
    length = struct.unpack(">H", data[sof + 2:sof + 4])[0]
    extra = bytearray(data[sof:sof + 2 + length])
    extra[5:9] = struct.pack(">HH", height, width)
    return data[:sos] + bytes(extra) + data[sos:]


def bmp_declaring(width: int, height: int) -> bytes:
    """A real 8x8 BMP whose info header claims width x height (negative: top-down rows)."""
    data = bytearray(image_bytes(8, 8, "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def other_format(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format=fmt)
    return buf.getvalue()


def corpus(big: int) -> dict[str, bytes]:
    """Each attack with `big` as the lying side's width and height (big*big over the limit)."""
    return {
        "png-two-ihdr": png_two_ihdr(1, big),
        "apng-frame-bigger-than-canvas": apng(16, big),
        "apng-huge-canvas": apng(big, big),
        "jpeg-huge-declared": jpeg_declaring(big, big),
        "jpeg-max-declared": jpeg_declaring(65535, 65535),
        "jpeg-second-frame-header": jpeg_two_frames(big, big),
        "bmp-huge-height": bmp_declaring(8, big * big),
        "bmp-huge-negative-height": bmp_declaring(8, -big * big),
        "bmp-most-negative-height": bmp_declaring(8, -(2**31)),
        "bmp-negative-width": bmp_declaring(-8, 8),
        "tiff-renamed-png": other_format("TIFF"),
        "webp-renamed-png": other_format("WEBP"),
    }
