"""An item's image output read back through the storage package: streamed as stored, or shrunk to a JPEG
thumbnail for the jobs page.

Only a succeeded image item's recorded output is read, and only inside its job's output location (outputs
reused with `--skip-existing` lie there too: the location is part of their fingerprint), so the API's
storage credentials cannot be turned on any other object.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterator
from typing import IO

from PIL import Image, UnidentifiedImageError
from sqlalchemy import select

import storage
from jobs import errors
from jobs.api import JobReport
from jobs.db import session_scope
from jobs.http.errors import ApiError
from jobs.keys import CONTENT_TYPES, EXTENSIONS
from jobs.lifecycle import ItemStatus, JobKind
from jobs.models import Item
from jobs.settings import Settings
from storage import is_within, open_stream

log = logging.getLogger(__name__)

#: The sizes a thumbnail may be asked in (its longer side, in pixels).
THUMB_MIN, THUMB_MAX = 16, 1024
#: Bytes read from storage and sent per step of a streamed output.
STREAM_BYTES = 256 * 1024
THUMB_QUALITY = 85
#: Content-Type per output extension (jobs.keys names both by image format).
_CONTENT_TYPES = {EXTENSIONS[fmt]: CONTENT_TYPES[fmt] for fmt in EXTENSIONS}


def output_url(settings: Settings, job: JobReport, item_id: str) -> str:
    """The URL of the item's output; a 404 saying why when it has none to send."""
    if job.kind == JobKind.CAPTION.value:
        raise ApiError(
            404,
            "no_output_file",
            f"job {job.id} is a caption job: its outputs are text, in the rows of /v1/jobs/{job.id}/results",
        )
    query = select(Item.status, Item.output).where(Item.job_id == job.id, Item.key == item_id)
    with session_scope(settings.resolved_database_url) as session:
        found = session.execute(query).first()
    if found is None:
        raise ApiError(404, "item_not_found", f"job {job.id} has no item {item_id!r}", field="item_id")
    status, output = found
    if status != ItemStatus.SUCCEEDED.value or not output:
        raise ApiError(404, "no_output_file", f"item {item_id!r} has no output: it is {status}")
    if not is_within(output, [job.output_url]):
        log.warning("item %r of job %s records an output outside its output location", item_id, job.id)
        raise ApiError(404, "no_output_file", f"item {item_id!r} has no output in {job.output_url}")
    return output


def content_type(url: str) -> str:
    """The Content-Type an output was stored with, from its extension."""
    ext = os.path.splitext(url)[1].lstrip(".").lower()
    return _CONTENT_TYPES.get(ext, "application/octet-stream")


def open_output(settings: Settings, url: str) -> IO[bytes]:
    """The output opened for one sequential read; storage's refusals as the API's errors, before any byte is
    sent."""
    try:
        return open_stream(url, settings.s3_options())
    except storage.StorageError as exc:
        raise _storage_refusal(exc, url) from exc


def _storage_refusal(exc: storage.StorageError, url: str) -> Exception:
    if isinstance(exc, storage.ObjectNotFound):
        return ApiError(404, "output_missing", f"the output {url} is no longer in storage")
    if isinstance(exc, storage.StorageUnavailable):
        return errors.StorageUnavailable(str(exc))
    # Refused credentials or a failing store: the server's storage failed it, not the request.
    failed = errors.from_storage(exc, role="output", url=url)
    return ApiError(502, failed.error_code, str(failed))


def stream_output(stream: IO[bytes]) -> Iterator[bytes]:
    """The stream's bytes, a step at a time; the stream is closed at the end or when the client leaves."""
    try:
        while chunk := stream.read(STREAM_BYTES):
            yield chunk
    finally:
        stream.close()


def thumbnail(settings: Settings, stream: IO[bytes], size: int, url: str) -> bytes:
    """A JPEG no larger than `size` x `size` (THUMB_MIN to THUMB_MAX) of the image in `stream` (read from
    `url`, closed after), its aspect kept and any transparency on white. The image limits of the settings
    hold here as for inputs: an output is read only up to the byte limit and refused above the pixel limit
    before its pixels are decoded."""
    if not THUMB_MIN <= size <= THUMB_MAX:
        raise ApiError(
            422, "invalid_parameters", f"thumb is {THUMB_MIN} to {THUMB_MAX} pixels", field="thumb"
        )
    try:
        data = stream.read(settings.max_image_bytes + 1)
    except storage.StorageError as exc:
        raise _storage_refusal(exc, url) from exc
    finally:
        stream.close()
    if len(data) > settings.max_image_bytes:
        raise errors.ImageTooLarge(
            f"the output has more than {settings.max_image_bytes} bytes (OVIS_BATCH_MAX_IMAGE_BYTES)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > settings.max_image_pixels:
                raise errors.ImageTooLarge(
                    f"the output is {width}x{height} pixels; the limit is {settings.max_image_pixels} "
                    "(OVIS_BATCH_MAX_IMAGE_PIXELS)"
                )
            image.draft("RGB", (size, size))  # a JPEG decodes at the smallest scale still as large
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            _on_white(image).save(buffer, format="JPEG", quality=THUMB_QUALITY)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise errors.ImageTooLarge(f"the output is refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise errors.InvalidImage("the output is not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise errors.InvalidImage(f"the output cannot be decoded: {exc}") from None
    return buffer.getvalue()


def _on_white(image: Image.Image) -> Image.Image:
    """RGB, transparent pixels composited on white as image viewers show them."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
