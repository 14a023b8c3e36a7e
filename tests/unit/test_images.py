from __future__ import annotations

import io

import pytest
from PIL import Image

from jobs.errors import ImageTooLarge, InvalidImage
from tests.helpers import sample_photo
from workers.images import decode_image

LIMITS = {"max_bytes": 10_000_000, "max_pixels": 4_000_000}


def _encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_jpeg_photo_decodes_to_rgb() -> None:
    image = decode_image(_encode(sample_photo(), "JPEG"), **LIMITS)
    assert image.mode == "RGB"


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_unreadable_bytes_are_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(data, **LIMITS)


def test_truncated_jpeg_is_invalid_image() -> None:
    data = _encode(sample_photo(size=256), "JPEG")
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2], **LIMITS)


def test_huge_dimensions_refused_before_decoding() -> None:
    # A 5000x5000 PNG of one colour compresses to a few KB: a decompression bomb in miniature.
    data = _encode(Image.new("L", (5000, 5000)), "PNG")
    assert len(data) < 100_000
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(data, **LIMITS)


def test_too_many_bytes_refused() -> None:
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode_image(b"x" * 101, max_bytes=100, max_pixels=10)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("L", "PNG")],
)
def test_modes_are_converted_to_rgb(mode: str, fmt: str) -> None:
    image = sample_photo().convert("RGB")
    source = image.convert(mode) if mode != "I;16" else image.convert("L").convert("I;16")
    decoded = decode_image(_encode(source, fmt), **LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.size == image.size


def test_alpha_is_composited_on_white() -> None:
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image(_encode(transparent, "PNG"), **LIMITS).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    decoded = decode_image(_encode(image, "JPEG", exif=exif.tobytes()), **LIMITS)
    assert decoded.size == (20, 40)


def test_animated_gif_takes_first_frame() -> None:
    frames = [Image.new("P", (16, 16), i) for i in (10, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buffer.getvalue(), **LIMITS)
    assert decoded.size == (16, 16)
