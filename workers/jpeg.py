"""The EXIF orientation of a JPEG, read from its header the way Pillow reads it."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

_EXIF = b"Exif\x00\x00"
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_MPF = b"MPF\x00"
# Pillow's Image.getexif takes the orientation from XMP when EXIF has none.
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')
_ORIENTATION_TAG = 0x0112
_SHORT = 3
_SOS = 0xDA
_APP1 = 0xE1
_APP2 = 0xE2
_NO_LENGTH = {0x00, 0x01, *range(0xD0, 0xDA)}


class _Unknown(Exception):
    """A header this reader does not follow."""


def is_jpeg(data: bytes) -> bool:
    """Whether the bytes start like a JPEG file (the test Pillow uses)."""
    return data[:3] == b"\xff\xd8\xff"


def orientation(data: bytes) -> int | None:
    """The orientation ImageOps.exif_transpose would read from a JPEG: 1 when none is recorded.

    None when the header is malformed or is one left to Pillow: several EXIF segments, multi-picture
    (MPO) files, an orientation tag of another type or count than one SHORT.
    """
    try:
        exif, xmp = _metadata(data)
        in_exif = _ifd0_orientation(data, *exif) if exif is not None else None
        match = _XMP_ORIENTATION.search(data, *xmp) if xmp is not None else None
    except (_Unknown, struct.error):
        return None
    in_xmp = int(match[2]) if match else None
    if in_exif is not None and in_xmp is not None and in_exif != in_xmp:
        return None  # Pillow reads XMP when it stops early in damaged EXIF
    for value in (in_exif, in_xmp):
        if value is not None:
            return value
    return 1


def _segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each segment's payload after SOI, up to the start of scan."""
    pos, size = 2, len(data)
    while True:
        if pos >= size or data[pos] != 0xFF:
            raise _Unknown
        while pos < size and data[pos] == 0xFF:
            pos += 1
        if pos >= size:
            raise _Unknown
        marker = data[pos]
        if marker == _SOS:
            return
        if marker in _NO_LENGTH or pos + 3 > size:
            raise _Unknown
        length = (data[pos + 1] << 8) | data[pos + 2]
        end = pos + 1 + length
        if length < 2 or end > size:
            raise _Unknown
        yield marker, pos + 3, end
        pos = end


def _metadata(data: bytes) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """Where the EXIF (TIFF) data and the last XMP packet lie, as (start, end) pairs."""
    exif: tuple[int, int] | None = None
    xmp: tuple[int, int] | None = None
    for marker, start, end in _segments(data):
        if marker == _APP1 and data.startswith(_EXIF, start, end):
            if exif is not None:  # Pillow joins the segments into one TIFF structure
                raise _Unknown
            exif = (start + len(_EXIF), end)
        elif marker == _APP1 and data.startswith(_XMP, start, end):
            xmp = (start + len(_XMP), end)
        elif marker == _APP2 and data.startswith(_MPF, start, end):
            raise _Unknown
    return exif, xmp


def _ifd0_orientation(data: bytes, start: int, end: int) -> int | None:
    """The orientation tag of IFD0 in the TIFF structure at data[start:end]; None when absent."""
    header = data[start : start + 4]
    if header == b"II*\x00":
        order = "<"
    elif header == b"MM\x00*":
        order = ">"
    else:
        raise _Unknown
    if start + 8 > end:
        raise _Unknown
    (offset,) = struct.unpack_from(order + "I", data, start + 4)
    table = start + offset + 2
    if table > end:
        raise _Unknown
    (count,) = struct.unpack_from(order + "H", data, table - 2)
    if table + 12 * count > end:
        raise _Unknown
    value: int | None = None
    for entry in range(table, table + 12 * count, 12):
        tag, kind, number, first = struct.unpack_from(order + "HHIH", data, entry)
        if tag == _ORIENTATION_TAG:
            if value is not None or kind != _SHORT or number != 1:
                raise _Unknown
            value = first
    return value
