"""Decoding inputs safely (limits checked before decoding) and encoding outputs with their provenance."""

from __future__ import annotations

import functools
import importlib
import io
import re
import warnings
from types import ModuleType
from typing import Any
from xml.sax.saxutils import quoteattr

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from jobs.errors import ImageTooLarge, InvalidImage, UnsupportedImage
from jobs.params import DEFAULT_QUALITY
from jobs.provenance import as_text


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception:  # not installed, or built for another numpy
        return None


_simplejpeg = _optional("simplejpeg")
# From this many pixels on, sharing libjpeg-turbo's RGBX output with Pillow beats copying RGB into it.
_SHARE_MIN_PIXELS = 256 * 256
# How a JPEG file starts (the test Pillow uses).
_JPEG_START = b"\xff\xd8\xff"
# The EXIF orientations ImageOps.exif_transpose turns an image for.
_TURNED = frozenset(range(2, 9))

# Modes converted to RGB; anything else is refused.
_CONVERTIBLE = {
    "RGB",
    "RGBA",
    "LA",
    "L",
    "P",
    "PA",
    "CMYK",
    "YCbCr",
    "I;16",
    "I;16B",
    "I;16L",
    "I",
    "F",
    "1",
    "LAB",
    "HSV",
    "RGBX",
    "RGBa",
}


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparent pixels on white, the way image viewers show them.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float greyscale: scale to 8 bits instead of clipping.
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        high = float(array.max()) or 1.0
        return Image.fromarray((array * (255.0 / high)).clip(0, 255).astype("uint8")).convert("RGB")
    return image.convert("RGB")


def _too_many_pixels(width: int, height: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
        "(OVIS_BATCH_MAX_IMAGE_PIXELS)"
    )


@functools.cache
def _pyarrow() -> ModuleType | None:
    """pyarrow, where Pillow can share the memory of its arrays (Image.fromarrow, Pillow 11.2)."""
    return _optional("pyarrow") if hasattr(Image, "fromarrow") else None


def _orientation(data: bytes) -> Any:
    """The orientation ImageOps.exif_transpose reads from a JPEG (1 where none is recorded), read by Pillow
    from the header alone (EXIF, else XMP); None where Pillow cannot read the header or the file holds
    several pictures (MPO)."""
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            if image.format != "JPEG":
                return None
            return image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return None


def _decode_jpeg(data: bytes, max_pixels: int) -> Image.Image | None:
    """An upright YCbCr, RGB or grey JPEG decoded by libjpeg-turbo with the GIL released.

    None leaves the file to Pillow: other colour spaces, a turned or unusual header, any decoding error.
    Large images share the decoded array's memory and are read-only (Pillow copies them on write).
    """
    assert _simplejpeg is not None
    try:
        height, width, colorspace, _ = _simplejpeg.decode_jpeg_header(data)
    except Exception:
        return None
    if colorspace not in ("YCbCr", "RGB", "Gray"):
        return None
    pixels = width * height
    if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
        return None  # Pillow refuses it as a decompression bomb
    orientation = _orientation(data)
    if orientation is None or orientation in _TURNED:
        return None
    if pixels > max_pixels:
        raise _too_many_pixels(width, height, max_pixels)
    try:
        pyarrow = _pyarrow() if pixels >= _SHARE_MIN_PIXELS else None
        if pyarrow is not None:
            rgbx = _simplejpeg.decode_jpeg(data, "RGBX", fastdct=False, fastupsample=False)
            shared = pyarrow.FixedSizeListArray.from_arrays(pyarrow.array(rgbx.reshape(-1)), 4)
            return Image.fromarrow(shared, "RGB", (width, height))
        rgb = _simplejpeg.decode_jpeg(data, "RGB", fastdct=False, fastupsample=False)
        return Image.frombuffer("RGB", (width, height), rgb, "raw", "RGB", 0, 1)
    except Exception:
        return None


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode an image to RGB with EXIF orientation applied.

    Size limits are checked from the header before any pixel is decoded (decompression bombs);
    animated images take their first frame; alpha is composited on white; CMYK, palette and 16-bit
    images are converted. Upright YCbCr and grey JPEGs are decoded by simplejpeg where it is installed
    (the same pixels as Pillow, with less CPU per image: see bench/pipeline_overhead.py); everything else by
    Pillow.
    """
    if not data:
        raise InvalidImage("the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"the file has {len(data)} bytes; the limit is {max_bytes} (OVIS_BATCH_MAX_IMAGE_BYTES)"
        )
    if _simplejpeg is not None and data.startswith(_JPEG_START):
        decoded = _decode_jpeg(data, max_pixels)
        if decoded is not None:
            return decoded
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise _too_many_pixels(width, height, max_pixels)
            if image.mode not in _CONVERTIBLE:
                raise UnsupportedImage(f"image mode {image.mode} is not supported")
            if getattr(image, "is_animated", False):
                image.seek(0)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
            return _to_rgb(image)
    except (ImageTooLarge, UnsupportedImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fires first for the largest sizes; name the limit the operator controls.
        raise ImageTooLarge(
            f"refused as a decompression bomb ({exc}); the limit is {max_pixels} pixels "
            "(OVIS_BATCH_MAX_IMAGE_PIXELS)"
        ) from None
    except UnidentifiedImageError:
        raise InvalidImage("not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"the image cannot be decoded: {exc}") from None


def encode_output(
    image: Image.Image, image_format: str, quality: int | None, provenance: dict[str, Any]
) -> bytes:
    """An image output's bytes in `image_format` ("png", "jpeg", "webp"), `provenance` embedded: one iTXt
    chunk per field in a PNG, an XMP packet in a JPEG or WebP (jobs.provenance). JPEG has no alpha: a
    transparent image is composited on white; PNG and WebP keep it."""
    fields = {name: as_text(value) for name, value in provenance.items() if value is not None}
    buffer = io.BytesIO()
    if image_format == "png":
        info = PngInfo()
        for name, value in fields.items():
            info.add_itxt(name, value)
        image.save(buffer, format="PNG", compress_level=1, pnginfo=info)
    elif image_format == "jpeg":
        xmp = xmp_packet(fields, JPEG_XMP_BYTES)
        _to_rgb(image).save(buffer, format="JPEG", quality=quality or DEFAULT_QUALITY, xmp=xmp)
    elif image_format == "webp":
        if image.mode not in ("RGB", "RGBA"):
            has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info
            image = image.convert("RGBA" if has_alpha else "RGB")
        image.save(buffer, format="WEBP", quality=quality or DEFAULT_QUALITY, xmp=xmp_packet(fields))
    else:
        raise ValueError(f"unknown image format {image_format!r}")
    return buffer.getvalue()


#: Bytes of XMP a JPEG holds (one APP1 segment, less its header).
JPEG_XMP_BYTES = 65533 - 29
#: The namespace of ovis-batch's XMP properties; readers see the fields by their names (`getxmp()`).
XMP_NAMESPACE = "urn:ovis-batch:provenance:1"
# Characters XML 1.0 cannot hold even escaped: an XMP parser refuses the packet whole.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# Escaped in attributes beyond & < > ": line ends and tabs would be read back as spaces.
_ATTRIBUTE_ESCAPES = {"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}


def xmp_packet(fields: dict[str, str], limit: int | None = None) -> bytes:
    """An XMP packet holding `fields` as properties of one rdf:Description. A control character XML cannot
    hold becomes U+FFFD; where the packet would exceed `limit` bytes the prompt is shortened to fit (the rows
    of results and exports keep it whole)."""
    fields = {name: _NOT_XML.sub("\ufffd", value) for name, value in fields.items()}
    packet = _xmp(fields)
    prompt = fields.get("prompt", "")
    while limit is not None and len(packet) > limit and prompt:
        prompt = prompt[: len(prompt) - max(1, (len(packet) - limit) // 6)]
        packet = _xmp(fields | {"prompt": prompt + "\u2026"})
    return packet


def _xmp(fields: dict[str, str]) -> bytes:
    properties = "".join(
        f"\n   ovis:{name}={quoteattr(value, _ATTRIBUTE_ESCAPES)}" for name, value in fields.items()
    )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        f'  <rdf:Description rdf:about="" xmlns:ovis="{XMP_NAMESPACE}"{properties}/>\n'
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    ).encode()
