"""Decoding uploads: formats judged by content, EXIF orientation, modes, limits."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

import attack_images
from detserve.errors import ImageTooLarge, InvalidImage
from detserve.processing.image import decode, inspect, limit_pillow, sniff
from support import image_bytes, stored_for_exif

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 50_000_000}


def display_and_stored(orientation: int) -> tuple[np.ndarray, bytes]:
    """A display image with a red square top-left, stored turned with that EXIF orientation."""
    display = np.full((120, 200, 3), 60, dtype=np.uint8)
    display[10:40, 20:60] = (240, 10, 10)
    stored = Image.fromarray(np.ascontiguousarray(stored_for_exif(display, orientation)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif)
    return display, buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    # every orientation, the transposing mirrors 5 and 7 included, comes back as the person sees it
    display, data = display_and_stored(orientation)
    decoded = decode(data, **LIMITS)
    assert (decoded.width, decoded.height) == (200, 120)
    assert decoded.pixels.shape == (120, 200, 3)
    red = decoded.pixels[..., 0] > 180
    ys, xs = np.nonzero(red)
    assert (ys.min(), xs.min(), ys.max(), xs.max()) == pytest.approx((10, 20, 39, 59), abs=2)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_become_white(mode):
    # a picture that is half see-through: the left half fully transparent, the right half opaque
    # dark red; the see-through part shows as white (what a browser shows), never as black
    rgba = np.zeros((20, 40, 4), dtype=np.uint8)
    rgba[:, 20:] = (120, 0, 0, 255)
    img = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        img = img.convert("LA")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        img.info["transparency"] = img.getpixel((0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG", **({"transparency": img.info["transparency"]} if mode == "P" else {}))
    px = decode(buf.getvalue(), **LIMITS).pixels.astype(int)
    assert (px[:, :20] == 255).all()
    opaque = (36, 36, 36) if mode == "LA" else (120, 0, 0)  # LA: the grey of dark red
    assert np.abs(px[:, 20:] - opaque).max() <= 2


@pytest.mark.parametrize("mode,key,opaque", [("L", 0, 90), ("RGB", (0, 0, 0), (120, 0, 0))])
def test_a_pngs_transparent_colour_becomes_white(mode, key, opaque):
    # tRNS in a grey or colour PNG: pixels of that one value are see-through (was: left black)
    img = Image.new(mode, (40, 20), key)
    img.paste(opaque, (20, 0, 40, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=key)
    px = decode(buf.getvalue(), **LIMITS).pixels.astype(int)
    assert (px[:, :20] == 255).all()
    assert (px[:, 20:] == opaque).all()


def test_half_transparent_pixels_are_blended_onto_white():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[...] = (0, 0, 0, 128)  # black at half opacity over white is mid grey
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    px = decode(buf.getvalue(), **LIMITS).pixels.astype(int)
    assert np.abs(px - 127).max() <= 1


@pytest.mark.parametrize("mode,fmt,extra", [
    ("L", "PNG", {}), ("P", "PNG", {}), ("RGBA", "PNG", {}), ("I;16", "PNG", {}), ("1", "BMP", {}),
    ("L", "JPEG", {}), ("RGB", "BMP", {}), ("CMYK", "JPEG", {}),
])
def test_modes_are_converted_to_rgb(mode, fmt, extra):
    img = Image.new(mode, (40, 30))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **extra)
    decoded = decode(buf.getvalue(), **LIMITS)
    assert decoded.pixels.shape == (30, 40, 3) and decoded.pixels.dtype == np.uint8


def test_sixteen_bit_keeps_its_contrast():
    arr = np.zeros((10, 10), dtype=np.uint16)
    arr[:, 5:] = 65535
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    px = decode(buf.getvalue(), **LIMITS).pixels
    assert px[0, 0, 0] == 0 and px[0, 9, 0] == 255
    arr[:, :5] = 32768  # mid grey stays mid grey
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    assert decode(buf.getvalue(), **LIMITS).pixels[0, 0, 0] in (127, 128)


def _other(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("data", [
    b"", b"hello, I am text", _other("GIF"), _other("TIFF"), _other("WEBP"),
    b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", b"%PDF-1.4\n%...",
    image_bytes(fmt="JPEG")[:200], image_bytes(fmt="PNG")[:60], b"\xff\xd8\xff" + b"\0" * 50,
    b"BM" + b"\0" * 10,
], ids=["empty", "text", "gif", "tiff", "webp", "svg", "pdf", "truncated-jpeg", "truncated-png",
        "jpeg-magic-only", "bmp-magic-only"])
def test_bad_images_are_refused_naming_the_formats(data):
    with pytest.raises(InvalidImage) as exc:
        decode(data, **LIMITS)
    assert "JPG, JPEG, BMP or PNG" in exc.value.message or "no image" in exc.value.message


@pytest.mark.parametrize("data", [
    image_bytes(641, 479, "JPEG"), image_bytes(33, 1000, "JPEG", mode="L"),
    image_bytes(300, 200, "JPEG", progressive=True),
    image_bytes(120, 80, "JPEG", exif=Image.Exif(), icc_profile=b"\0" * 5000),
    display_and_stored(6)[1],
    image_bytes(500, 3, "PNG"), image_bytes(7, 9, "PNG", mode="I;16"),
    image_bytes(64, 65, "PNG", mode="P"), image_bytes(101, 57, "BMP"),
    image_bytes(9, 17, "BMP", mode="1"), image_bytes(40, 30, "BMP", mode="RGBA"),
], ids=["jpeg", "jpeg-grey", "jpeg-progressive", "jpeg-big-header", "jpeg-exif", "png",
        "png-16bit", "png-palette", "bmp", "bmp-1bit", "bmp-rgba"])
def test_the_header_reader_agrees_with_pil(data):
    fmt = sniff(data)
    assert fmt is not None
    with Image.open(io.BytesIO(data)) as img:
        assert inspect(data, **LIMITS) == (fmt, *img.size)


def test_byte_limit():
    with pytest.raises(ImageTooLarge, match="bytes"):
        inspect(image_bytes(), max_bytes=100, max_pixels=10**9)


def test_pixel_limit_is_checked_before_decoding():
    # a 20000x20000 PNG of one colour is small on disk and 400 MP decoded: a bomb
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG", optimize=True)
    data = buf.getvalue()
    assert len(data) < 2_000_000
    with pytest.raises(ImageTooLarge, match="pixels"):
        inspect(data, **LIMITS)
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode(data, **LIMITS)


def test_large_jpeg_decodes_at_reduced_scale_with_true_geometry():
    big = image_bytes(4000, 3000, fmt="JPEG")
    decoded = decode(big, **LIMITS, target=320)
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert decoded.pixels.shape[1] < 4000 and decoded.scale == pytest.approx(4000 / decoded.pixels.shape[1])


# ---- headers that lie (issue 12): the limits apply to what the decoder would decode ------------

SMALL_LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 1_000_000}


@pytest.mark.parametrize("name", sorted(attack_images.corpus(2000)))
def test_lying_headers_are_refused_before_any_pixel_is_decoded(name):
    data = attack_images.corpus(2000)[name]
    for check in (inspect, decode):
        with pytest.raises((InvalidImage, ImageTooLarge)) as exc:
            check(data, **SMALL_LIMITS)
        assert exc.value.status_code in {400, 413}
        assert not re.search(r"0x[0-9a-f]{6,}|BytesIO", exc.value.message)  # no object addresses


def test_a_second_ihdr_is_the_size_that_counts():
    data = attack_images.png_two_ihdr(1, 2000)  # 1x1 by its first header, 4 MP decoded
    with pytest.raises(ImageTooLarge, match="2000x2000 = 4000000 pixels"):
        inspect(data, **SMALL_LIMITS)


@pytest.mark.parametrize("big", [8000, 12000])  # under and over Pillow's own error (2x its limit)
def test_pillows_bomb_check_answers_at_our_limit_as_413(big):
    data = attack_images.jpeg_declaring(big, big)
    with pytest.raises(ImageTooLarge, match="limit"):
        inspect(data, **LIMITS)
    with pytest.raises(ImageTooLarge, match="limit"):
        decode(data, **LIMITS)


def test_pillows_bomb_limit_set_to_ours_answers_as_413(monkeypatch):
    # given: a worker's process, where Pillow's limit is ours
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    limit_pillow(1_000_000)
    assert Image.MAX_IMAGE_PIXELS == 1_000_000
    # then: its warning (1x to 2x the limit) and its error (above) are our 413
    for side in (1100, 3000):
        data = attack_images.jpeg_declaring(side, side)
        with pytest.raises(ImageTooLarge, match="limit"):
            decode(data, max_bytes=10**6, max_pixels=10**9)


def test_an_ihdr_after_the_pixels_changes_nothing():
    data = attack_images.png_ihdr_after_idat(3, 2000)
    assert inspect(data, **SMALL_LIMITS) == ("PNG", 3, 3)
    assert decode(data, **SMALL_LIMITS).pixels.shape == (3, 3, 3)


def test_a_top_down_bmp_within_the_limit_still_decodes():
    data = attack_images.bmp_declaring(8, -8)
    assert inspect(data, **SMALL_LIMITS) == ("BMP", 8, 8)
    assert decode(data, **SMALL_LIMITS).pixels.shape == (8, 8, 3)
def test_the_pixel_limit_message_gives_the_count():
    with pytest.raises(ImageTooLarge, match="300x200 = 60000 pixels; the limit is 50000"):
        inspect(image_bytes(300, 200), max_bytes=1 << 20, max_pixels=50_000)


def test_an_image_of_exactly_the_byte_limit_is_accepted():
    data = image_bytes(30, 20)
    assert inspect(data, max_bytes=len(data), max_pixels=1 << 20) == ("PNG", 30, 20)


def test_sixteen_bit_within_eight_bit_range_keeps_its_values():
    arr = np.full((4, 4), 255, dtype=np.uint16)  # a 16-bit file whose values never pass 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    assert decode(buf.getvalue(), **LIMITS).pixels[0, 0, 0] == 255


def test_a_top_down_bmp_has_its_true_size():
    data = bytearray(image_bytes(40, 30, "BMP"))
    data[22:26] = (-30).to_bytes(4, "little", signed=True)  # negative height: rows stored top-down
    assert inspect(bytes(data), **LIMITS) == ("BMP", 40, 30)
    assert decode(bytes(data), **LIMITS).pixels.shape == (30, 40, 3)


def test_an_image_of_exactly_the_pixel_limit_is_accepted():
    data = image_bytes(30, 20)
    assert inspect(data, max_bytes=1 << 20, max_pixels=600) == ("PNG", 30, 20)
    assert decode(data, max_bytes=1 << 20, max_pixels=600).image.size == (30, 20)
