"""Decoding inputs safely (limits checked before decoding) and encoding outputs."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from jobs.errors import ImageTooLarge, InvalidImage, UnsupportedImage

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


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode an image to RGB with EXIF orientation applied.

    Size limits are checked from the header before any pixel is decoded (decompression bombs);
    animated images take their first frame; alpha is composited on white; CMYK, palette and 16-bit
    images are converted.
    """
    if not data:
        raise InvalidImage("the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"the file has {len(data)} bytes; the limit is {max_bytes} (OVIS_BATCH_MAX_IMAGE_BYTES)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                    "(OVIS_BATCH_MAX_IMAGE_PIXELS)"
                )
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


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image (lossless, what edits and generations are stored as)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
