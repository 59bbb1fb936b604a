"""Decode uploads by their bytes (JPEG, PNG, BMP only), upright as a person sees them."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detserve.errors import ImageTooLarge, InvalidImage

ACCEPTED = "JPG, JPEG, BMP or PNG"
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"BM": "BMP"}
# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image plus the factor from its pixels to the original's pixels."""

    image: Image.Image  # kept as PIL: resizing from it needs no copy of the full-size pixels
    width: int  # of the upright original
    height: int
    scale: float  # original pixels per decoded pixel (>1 after JPEG draft decoding)

    @property
    def pixels(self) -> np.ndarray:
        """HxWx3 uint8 RGB."""
        return np.asarray(self.image)


def sniff(data: bytes) -> str | None:
    """The format the bytes start with, or None."""
    for magic, fmt in _MAGIC.items():
        if data.startswith(magic):
            return fmt
    return None


def decode(
    data: bytes, *, max_bytes: int, max_pixels: int, target: int | None = None
) -> DecodedImage:
    """Decode and orient an upload; `target` lets a large JPEG decode at a reduced scale.

    Raises:
        InvalidImage: not JPEG/PNG/BMP by content, empty, truncated or damaged.
        ImageTooLarge: over the byte limit or the pixel limit (checked before decoding).
    """
    fmt, _, _ = inspect(data, max_bytes=max_bytes, max_pixels=max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1) if fmt == "JPEG" else 1
            if orientation in _TRANSPOSED:
                width, height = height, width
            if fmt == "JPEG" and target and min(img.size) >= 2 * target:
                # libjpeg can decode at 1/2, 1/4 or 1/8 scale (DCT-domain averaging): ask for no
                # less than twice the size the model will see, and resize the rest of the way.
                gain = 2 * target / min(img.size)
                img.draft("RGB", (round(img.size[0] * gain), round(img.size[1] * gain)))
            img.load()
            img = ImageOps.exif_transpose(img) if orientation != 1 else img
            rgb = _to_rgb(img)
    except (ImageTooLarge, InvalidImage):
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"the {fmt} image is damaged or truncated ({exc}); send a whole "
                           f"{ACCEPTED} file") from exc
    return DecodedImage(image=rgb, width=width, height=height, scale=width / rgb.size[0])


def inspect(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[str, int, int]:
    """Format and size from the header alone (cheap: for the API, before anything is queued).

    Raises:
        InvalidImage / ImageTooLarge: as decode() would, except for damage past the header.
    """
    check_bytes(data, max_bytes=max_bytes)
    fmt = sniff(data)
    if fmt is None:
        raise InvalidImage(f"the upload is not a {ACCEPTED} image (judged by its content)")
    size = header_size(fmt, data)
    if size is not None:
        width, height = size
    else:
        width, height = _pil_size(fmt, data, max_pixels)
    if width * height > max_pixels:
        raise ImageTooLarge(f"the image has {width}x{height} = {width * height} pixels; "
                            f"the limit is {max_pixels}")
    return fmt, width, height


def _pil_size(fmt: str, data: bytes, max_pixels: int) -> tuple[int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image has too many pixels ({exc}); the limit is {max_pixels}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"the {fmt} image is damaged ({exc}); send a whole {ACCEPTED} file") from exc
    return width, height


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # markers without a length


def header_size(fmt: str, data: bytes) -> tuple[int, int] | None:
    """Width and height read straight from a well-formed header; None leaves the judgement to
    PIL. Ten times cheaper than PIL's parser (2.5 against 25 us), on the API's request path."""
    if fmt == "PNG":
        if data[12:16] != b"IHDR" or len(data) < 24:
            return None
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    elif fmt == "BMP":
        if len(data) < 26:
            return None
        dib = int.from_bytes(data[14:18], "little")
        if dib == 12:  # OS/2 core header
            width, height = int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
        elif dib >= 40:
            width = int.from_bytes(data[18:22], "little", signed=True)
            height = abs(int.from_bytes(data[22:26], "little", signed=True))  # < 0: top-down
        else:
            return None
    else:
        width = height = 0
        pos, end = 2, min(len(data), 1 << 20)  # the frame header comes before the scan data
        while pos + 9 <= end and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
            elif marker in _STANDALONE:
                pos += 2
            elif marker in _SOF:
                height = int.from_bytes(data[pos + 5:pos + 7], "big")
                width = int.from_bytes(data[pos + 7:pos + 9], "big")
                break
            else:
                pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return (width, height) if width > 0 and height > 0 else None


def check_bytes(data: bytes, *, max_bytes: int) -> None:
    """Cheap checks that need no decoding: present, and within the byte limit."""
    if not data:
        raise InvalidImage(f"no image was sent: upload one {ACCEPTED} file in field 'images'")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes} bytes")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in {"I;16", "I;16B", "I;16L", "I"}:
        arr = np.asarray(img, dtype=np.float32)
        peak = float(arr.max()) or 1.0
        scaled = (arr * (255.0 / (65535.0 if peak > 255 else 255.0))).clip(0, 255)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if img.mode in {"RGBA", "LA", "PA"} or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
