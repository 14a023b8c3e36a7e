"""Storage objects read as streams: text lines without holding the object, and seekable ranged reads.

Manifests and tar shards in S3 can be larger than a producer's memory; these readers keep a bounded buffer
whatever the object's size.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from jobs.errors import InvalidSource
from storage import ObjectNotFound, S3Options, StorageError, parse_url, s3_client
from storage.s3 import wrap_error

#: Read-ahead of a seekable S3 reader: one ranged GET per this many bytes.
RANGE_BYTES = 8 * 1024 * 1024


def _source_error(exc: StorageError, url: str) -> InvalidSource:
    if isinstance(exc, ObjectNotFound):
        return InvalidSource(f"{url} does not exist")
    return InvalidSource(f"{url} cannot be read: {exc}")


def open_stream(url: str, s3: S3Options | None) -> IO[bytes]:
    """Open an object for one sequential read (a local file, or an S3 GET whose body streams)."""
    location = parse_url(url)
    if location.scheme == "local":
        try:
            return open(location.path, "rb")
        except FileNotFoundError:
            raise InvalidSource(f"{url} does not exist") from None
        except OSError as exc:
            raise InvalidSource(f"{url} cannot be read: {exc.strerror or exc}") from None
    try:
        response = s3_client(s3 or S3Options()).get_object(Bucket=location.bucket, Key=location.path)
    except (BotoCoreError, ClientError) as exc:
        raise _source_error(wrap_error(exc, "read", url), url) from exc
    body: Any = response["Body"]
    return io.BufferedReader(body, buffer_size=1024 * 1024)


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
        except (OSError, EOFError, zlib.error) as exc:
            if not gzipped:
                raise
            raise InvalidSource(f"{url} line {lineno + 1}: not readable as gzip data ({exc})") from None


class RangedReader(io.RawIOBase):
    """A seekable read-only view of an S3 object: each read is a ranged GET (wrap it in a BufferedReader)."""

    def __init__(self, url: str, s3: S3Options | None) -> None:
        super().__init__()
        location = parse_url(url)
        self.url, self.bucket, self.key = url, location.bucket, location.path
        self.client = s3_client(s3 or S3Options())
        try:
            self.size = int(self.client.head_object(Bucket=self.bucket, Key=self.key)["ContentLength"])
        except (BotoCoreError, ClientError) as exc:
            raise _source_error(wrap_error(exc, "read", url), url) from exc
        self.position = 0

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Always seekable."""
        return True

    def tell(self) -> int:
        """The current position."""
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position; no request is made until the next read."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` from the current position with one ranged GET."""
        view = memoryview(buffer).cast("B")
        stop = min(self.size, self.position + len(view))
        if stop <= self.position:
            return 0
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self.key, Range=f"bytes={self.position}-{stop - 1}"
            )
            data = response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise _source_error(wrap_error(exc, "read", self.url), self.url) from exc
        view[: len(data)] = data
        self.position += len(data)
        return len(data)


def open_seekable(url: str, s3: S3Options | None) -> IO[bytes]:
    """Open an object for random access (Parquet footers, tar headers): a local file or ranged S3 reads."""
    location = parse_url(url)
    if location.scheme == "local":
        return open_stream(url, s3)
    return io.BufferedReader(RangedReader(url, s3), buffer_size=RANGE_BYTES)
