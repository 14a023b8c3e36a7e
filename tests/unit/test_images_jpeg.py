"""decode_image's simplejpeg path gives what its Pillow path gives: the same pixels, the same errors."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import pytest
from PIL import Image

from tests.helpers import SAMPLE_PHOTOS, sample_photo
from workers import images
from workers.images import decode_image

pytest.importorskip("simplejpeg")

LIMITS = {"max_bytes": 10_000_000, "max_pixels": 4_000_000}
Outcome = tuple[str, object]
# (left, top, width, height): small (copied into Pillow), odd-sized, and large enough to be shared.
CROPS = [(0, 0, 64, 64), (13, 7, 97, 61), (40, 20, 300, 260)]


def _jpeg(image: Image.Image, **kw: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kw)
    return buffer.getvalue()


def _crops(name: str) -> list[Image.Image]:
    photo = sample_photo(name, size=None)
    return [photo.crop((x, y, x + w, y + h)) for x, y, w, h in CROPS]


def _outcome(decode: Callable[[], Image.Image]) -> Outcome:
    try:
        image = decode()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return image.mode, (image.size, image.tobytes())


def _both(data: bytes, monkeypatch: pytest.MonkeyPatch, **limits: int) -> tuple[Outcome, Outcome]:
    """decode_image's outcome as it is, and with the Pillow path only."""
    limits = {**LIMITS, **limits}
    fast = _outcome(lambda: decode_image(data, **limits))
    with monkeypatch.context() as patch:
        patch.setattr(images, "_simplejpeg", None)
        pillow = _outcome(lambda: decode_image(data, **limits))
    return fast, pillow


def _with_segments(data: bytes, *segments: bytes) -> bytes:
    """A JPEG with extra segments right after SOI."""
    return data[:2] + b"".join(segments) + data[2:]


def _app(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _exif(orientation: int, order: str = "<", kind: int = 3, count: int = 1) -> bytes:
    head = b"II*\x00" if order == "<" else b"MM\x00*"
    entry = struct.pack(order + "HHIH2x", 0x0112, kind, count, orientation)
    return b"Exif\x00\x00" + head + struct.pack(order + "IH", 8, 1) + entry + struct.pack(order + "I", 0)


@pytest.mark.parametrize("name", SAMPLE_PHOTOS)
@pytest.mark.parametrize("subsampling", [0, 1, 2], ids=["444", "422", "420"])
@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_same_pixels_as_pillow(
    name: str, subsampling: int, progressive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for crop in _crops(name):
        for quality in (50, 95):
            data = _jpeg(crop, quality=quality, subsampling=subsampling, progressive=progressive)
            assert images._decode_jpeg(data, LIMITS["max_pixels"]) is not None
            fast, pillow = _both(data, monkeypatch)
            assert fast == pillow, (crop.size, quality)


@pytest.mark.parametrize("name", SAMPLE_PHOTOS)
def test_grey_same_pixels_as_pillow(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for crop in _crops(name):
        data = _jpeg(crop.convert("L"), quality=90)
        assert images._decode_jpeg(data, LIMITS["max_pixels"]) is not None
        fast, pillow = _both(data, monkeypatch)
        assert fast == pillow


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_same_as_pillow(orientation: int, monkeypatch: pytest.MonkeyPatch) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(_crops("astronaut.png")[1], exif=exif.tobytes())
    assert images._orientation(data) == orientation
    fast, pillow = _both(data, monkeypatch)
    assert fast == pillow
    if orientation == 6:
        assert decode_image(data, **LIMITS).size == (61, 97)


def test_large_image_without_pyarrow_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jpeg(_crops("coffee.png")[2])
    shared = decode_image(data, **LIMITS)
    monkeypatch.setattr(images, "_pyarrow", lambda: None)
    copied = decode_image(data, **LIMITS)
    assert (shared.readonly, copied.readonly) == (1, 0)
    assert copied.tobytes() == shared.tobytes()


def test_large_image_is_shared_and_copied_on_write() -> None:
    data = _jpeg(_crops("chelsea.png")[2])
    image = decode_image(data, **LIMITS)
    image.paste((1, 2, 3), (0, 0, 4, 4))
    image.putpixel((10, 10), (4, 5, 6))
    assert (image.mode, image.getpixel((0, 0)), image.getpixel((10, 10))) == ("RGB", (1, 2, 3), (4, 5, 6))
    assert decode_image(data, **LIMITS).getpixel((0, 0)) != (1, 2, 3)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the malformed ones
@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        ((), 1),
        ((_app(0xE1, _exif(1)),), 1),
        ((_app(0xE1, _exif(3, order=">")),), 3),
        ((_app(0xE1, _exif(6)), _app(0xE1, b'http://ns.adobe.com/xap/1.0/\x00tiff:Orientation="6"')), 6),
        ((_app(0xE1, _exif(1)), _app(0xE1, b'http://ns.adobe.com/xap/1.0/\x00tiff:Orientation="6"')), 1),
        ((_app(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<tiff:Orientation>8</tiff:Orientation>"),), 8),
        ((_app(0xE1, _exif(1)), _app(0xE1, _exif(6))), 1),  # the first EXIF segment counts
        ((_app(0xE1, _exif(6, kind=4)),), 6),
        ((_app(0xE1, _exif(6, count=2)),), 6),
        ((_app(0xE1, _exif(6)[:20]),), 1),  # truncated IFD
        ((_app(0xE1, b"Exif\x00\x00XX*\x00" + _exif(6)[10:]),), 1),
        ((_app(0xE2, b"MPF\x00II*\x00"),), 1),  # an MPF segment that names no second picture
        ((b"\xff\xe1\x00\x01",), 1),  # segment length below 2
        ((b"\xff\xe1\xff\xff",), None),  # segment past the end
        ((b"\x00",), None),
    ],
)
def test_orientation_reader(
    segments: tuple[bytes, ...], expected: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orientation as Pillow reads it from the header, and the same outcome as Pillow's path."""
    data = _with_segments(_jpeg(_crops("coffee.png")[1]), *segments)
    assert images._orientation(data) == expected
    fast, pillow = _both(data, monkeypatch)
    assert fast == pillow


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: data[:-2],
        lambda data: data[:600] + b"\x00" * 50 + data[650:],
        lambda data: data[:300] + b"\xff\xd9" + data[302:],
        lambda data: data[:4] + b"\x00\x01" + data[6:],
    ],
)
def test_damaged_files_same_outcome_as_pillow(
    damage: Callable[[bytes], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    for progressive in (False, True):
        data = damage(_jpeg(_crops("rocket.jpg")[2], progressive=progressive))
        fast, pillow = _both(data, monkeypatch)
        assert fast == pillow


def test_pixel_limit_same_error_as_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jpeg(_crops("astronaut.png")[2])
    fast, pillow = _both(data, monkeypatch, max_pixels=300 * 260 - 1)
    assert fast == pillow
    assert fast[0] == "ImageTooLarge"


def test_cmyk_is_left_to_pillow() -> None:
    data = _jpeg(_crops("astronaut.png")[0].convert("CMYK"))
    assert images._decode_jpeg(data, LIMITS["max_pixels"]) is None
    assert decode_image(data, **LIMITS).mode == "RGB"


def test_multi_picture_file_is_left_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _crops("chelsea.png")[:2]
    buffer = io.BytesIO()
    first.save(buffer, format="MPO", save_all=True, append_images=[second])
    data = buffer.getvalue()
    assert images._orientation(data) is None
    assert images._decode_jpeg(data, LIMITS["max_pixels"]) is None
    fast, pillow = _both(data, monkeypatch)
    assert fast == pillow
    assert decode_image(data, **LIMITS).size == first.size
