"""Decode uploads by their bytes (JPEG, PNG, BMP only), upright as a person sees them."""

from __future__ import annotations

import io
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
        ImageTooLarge: over the byte limit, or the opened image over the pixel limit (checked on
            the very object that then loads its pixels, so no header trick gets past it).
    """
    fmt, img = _open(data, max_bytes=max_bytes, max_pixels=max_pixels)
    try:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1) if fmt == "JPEG" else 1
        if orientation in _TRANSPOSED:
            width, height = height, width
        if fmt == "JPEG" and target and min(img.size) >= 2 * target:
            # libjpeg can decode at 1/2, 1/4 or 1/8 scale (DCT-domain averaging): ask for no
            # less than twice the size the model will see, and resize the rest of the way.
            gain = 2 * target / min(img.size)
            img.draft("RGB", (round(img.size[0] * gain), round(img.size[1] * gain)))
        _check_pixels(img, max_pixels)
        img.load()
        img = ImageOps.exif_transpose(img) if orientation != 1 else img
        rgb = _to_rgb(img)
    except (ImageTooLarge, InvalidImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(img.size, max_pixels) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _damaged(fmt, exc) from exc
    return DecodedImage(image=rgb, width=width, height=height, scale=width / rgb.size[0])


def inspect(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[str, int, int]:
    """Format and size as Pillow reads them from the headers, without decoding a pixel (for the
    API, before anything is queued).

    Raises:
        InvalidImage / ImageTooLarge: as decode() would, except for damage past the headers.
    """
    fmt, img = _open(data, max_bytes=max_bytes, max_pixels=max_pixels)
    with img:
        return fmt, *img.size


def limit_pillow(max_pixels: int) -> None:
    """Set Pillow's own decompression-bomb limit (a process-wide setting) to ours, for a process
    that decodes images for one configuration (a worker). Our check on each opened image is the
    rule either way; Pillow's stays on behind it, never silenced, and answers as our 413."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def _open(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[str, Image.Image]:
    """The upload opened lazily (headers parsed, no pixels) by the plugin of its magic bytes, its
    size within the pixel limit."""
    check_bytes(data, max_bytes=max_bytes)
    fmt = sniff(data)
    if fmt is None:
        raise InvalidImage(f"the upload is not a {ACCEPTED} image (judged by its content)")
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"the image has more pixels than the limit of {max_pixels}; send a "
                            "smaller image") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _damaged(fmt, exc) from exc
    try:
        _check_pixels(img, max_pixels)
    except (ImageTooLarge, InvalidImage):
        img.close()
        raise
    return fmt, img


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"the image says it is {width}x{height} pixels; send a whole "
                           f"{ACCEPTED} file")
    if width * height > max_pixels:
        raise _too_many_pixels(img.size, max_pixels)


def _too_many_pixels(size: tuple[int, int], max_pixels: int) -> ImageTooLarge:
    width, height = size
    return ImageTooLarge(f"the image has {width}x{height} = {width * height} pixels; the limit "
                         f"is {max_pixels}; send a smaller image")


def _damaged(fmt: str, exc: BaseException) -> InvalidImage:
    if isinstance(exc, UnidentifiedImageError):  # its text names only an in-memory object
        return InvalidImage(f"the {fmt} image's headers are damaged or contradict each other; "
                            f"send a whole {ACCEPTED} file")
    # Pillow's own words name the damage, never a path: it reads from memory
    return InvalidImage(f"the {fmt} image is damaged or truncated ({exc}); send a whole "
                        f"{ACCEPTED} file")


def check_bytes(data: bytes, *, max_bytes: int) -> None:
    """Cheap checks that need no decoding: present, and within the byte limit."""
    if not data:
        raise InvalidImage(f"no image was sent: upload one {ACCEPTED} file in field 'images'")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes} bytes")


def _to_rgb(img: Image.Image) -> Image.Image:
    # alpha, or a PNG's transparent colour (tRNS: a palette entry, or one grey or RGB value),
    # shows as white, as a browser shows it
    if img.mode in {"RGBA", "LA", "PA"} or (img.mode in {"P", "L", "RGB"} and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    if img.mode in {"I;16", "I;16B", "I;16L", "I"}:
        arr = np.asarray(img, dtype=np.float32)
        peak = float(arr.max()) or 1.0
        scaled = (arr * (255.0 / (65535.0 if peak > 255 else 255.0))).clip(0, 255)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")
