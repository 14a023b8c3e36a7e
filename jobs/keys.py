"""Where an item's output is stored: one key scheme for local folders and S3, injective and bounded.

An item's output lives at ``{job_id}/{name}.{ext}`` under the job's output location, where ``name`` is the
item's id percent-encoded: every UTF-8 byte outside ``A-Z a-z 0-9 . _ - ~`` (and a leading ``.``, which would
hide the file) is written ``%XX``. Encoding is reversible, so two different ids never share an output, and
an id that is already safe keeps its spelling (``photo-001`` -> ``photo-001.png``, ``a/b`` -> ``a%2Fb.png``).
The extension follows the item's image format (``png``, ``jpg``, ``webp``); none holds a ``.``, so a key still
names one item whatever the formats of a job's items (``a.jpg`` as PNG is ``a.jpg.png``, ``a`` as JPEG
``a.jpg``).
The name is bounded so that it fits a file name on every common filesystem beside the store's temporary
files; an id whose name would be longer is refused at submit.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import quote, unquote

from jobs.errors import InvalidParameters

#: Bytes of an encoded name at most: a 255-byte file name holds it with the extension and the ".{16 hex}
#: .ovis-tmp" a local store adds to its temporary files.
MAX_NAME_BYTES = 200
#: Bytes of an S3 object key at most (S3's own limit).
MAX_S3_KEY_BYTES = 1024
#: The longest extension an output may get ("webp").
MAX_EXT_BYTES = 4
#: Bytes of ``{job_id}/`` (a job id is 32 hex digits).
JOB_PART_BYTES = 33

#: The formats image outputs are written in; PNG (lossless) unless a job or an item asks for another.
ImageFormat = Literal["png", "jpeg", "webp"]
DEFAULT_IMAGE_FORMAT: ImageFormat = "png"
#: The extension of an output's key, and the Content-Type it is stored with, per image format.
EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

#: Ids that are their own name (most ids): no byte to escape, no leading ".".
_SAFE_ID = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*")


def encode_name(item_id: str) -> str:
    """The file name stem of an item's output: `item_id` percent-encoded (see the module's docstring)."""
    if _SAFE_ID.fullmatch(item_id):
        return item_id
    name = quote(item_id, safe="", errors="strict")
    return "%2E" + name[1:] if name.startswith(".") else name


def decode_name(name: str) -> str:
    """The item id an encoded name came from (the inverse of `encode_name`)."""
    return unquote(name, errors="strict")


def output_key(job_id: str, item_id: str, ext: str) -> str:
    """Key of an item's output under its job's output location: a redelivered item overwrites, never adds."""
    return f"{job_id}/{encode_name(item_id)}.{ext}"


def image_output_key(job_id: str, item_id: str, image_format: str) -> str:
    """Key of an item's image output in `image_format` (one of EXTENSIONS)."""
    return output_key(job_id, item_id, EXTENSIONS[image_format])


def check_output_name(item_id: str) -> None:
    """Refuse an id whose output name would be too long to store (raised at submit, naming the id)."""
    size = len(encode_name(item_id))
    if size > MAX_NAME_BYTES:
        shown = item_id if len(item_id) <= 80 else item_id[:60] + "..."
        raise InvalidParameters(
            f"item id {shown!r} is too long for an output name: it encodes to {size} bytes, at most "
            f"{MAX_NAME_BYTES} are allowed (each byte outside A-Z a-z 0-9 . _ - ~ takes 3)"
        )


def check_output_prefix(prefix: str) -> None:
    """Refuse an S3 output prefix too long for the keys of every allowed id."""
    room = MAX_S3_KEY_BYTES - JOB_PART_BYTES - MAX_NAME_BYTES - 1 - MAX_EXT_BYTES - 1
    if len(prefix.encode("utf-8")) > room:
        raise InvalidParameters(
            f"the output prefix {prefix[:60]!r}... has {len(prefix.encode())} bytes; S3 keys hold 1024, "
            f"which leaves at most {room} for the prefix"
        )
