"""Sources read from storage as streams: text lines without holding the object, and random access.

Manifests and tar shards in S3 can be larger than a producer's memory; storage's streams keep a bounded
buffer whatever the object's size. What storage refuses while a source is opened is an InvalidSource
(jobs.errors.from_storage).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from typing import IO

import storage
from jobs.errors import InvalidSource, from_storage
from storage import S3Options, StorageError


def open_stream(url: str, s3: S3Options | None) -> IO[bytes]:
    """Open a source for one sequential read (a local file, or an S3 GET whose body streams)."""
    try:
        return storage.open_stream(url, s3)
    except StorageError as exc:
        raise from_storage(exc, role="source", url=url) from exc


def open_seekable(url: str, s3: S3Options | None) -> IO[bytes]:
    """Open a source for random access (Parquet footers, tar headers): a local file or ranged S3 reads."""
    try:
        return storage.open_seekable(url, s3)
    except StorageError as exc:
        raise from_storage(exc, role="source", url=url) from exc


def iter_lines(url: str, s3: S3Options | None) -> Iterator[tuple[int, str]]:
    """(line number from 1, line with its end) of a UTF-8 text object, streamed, gunzipped if its name ends
    in .gz. A byte order mark at the start is dropped; invalid UTF-8 raises InvalidSource naming the line.

    Lines end at "\\n" only: a "\\r" before it stays for the csv module, which reads "\\r\\n" inside quoted
    fields as part of the value, and JSON and prompt lines drop it as whitespace.
    """
    gzipped = url.lower().endswith(".gz")
    with open_stream(url, s3) as raw:
        stream: IO[bytes] | gzip.GzipFile = gzip.GzipFile(fileobj=raw) if gzipped else raw
        lineno = 0
        try:
            for lineno, data in enumerate(stream, start=1):
                try:
                    line = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InvalidSource(
                        f"{url} line {lineno}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at byte "
                        f"{exc.start + 1} of the line); save the file as UTF-8"
                    ) from None
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                yield lineno, line
        except StorageError as exc:  # the connection failed for good while the body streamed
            raise from_storage(exc, role="source", url=url) from exc
        except (OSError, EOFError, zlib.error) as exc:
            if not gzipped:
                raise
            raise InvalidSource(f"{url} line {lineno + 1}: not readable as gzip data ({exc})") from None
