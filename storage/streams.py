"""Objects read as streams in bounded memory: once from start to end, or anywhere by ranged reads.

Manifests and tar shards can be larger than a producer's memory. A sequential stream is a local file or the
body of one S3 GET, read as it arrives; a seekable one (Parquet footers, tar headers) is a local file or an S3
object read by ranged GETs. Every failure, when opening or later while reading, is one of the package's
errors.
"""

from __future__ import annotations

import io
from typing import IO, Any

from storage.local import wrap_os_error
from storage.s3 import S3Answer, S3Options, S3Store
from storage.urls import parse_url

#: Read-ahead of a seekable S3 stream: one ranged GET per this many bytes.
RANGE_BYTES = 8 * 1024 * 1024
#: Read-ahead of a sequential S3 stream.
STREAM_BYTES = 1024 * 1024


def open_stream(url: str, s3: S3Options | None = None) -> IO[bytes]:
    """Open an object for one sequential read: a local file, or an S3 GET whose body streams."""
    location = parse_url(url)
    if location.scheme == "local":
        return _open_local(location.path)
    store, key = _s3_object(url, location.bucket, location.path, s3)
    return io.BufferedReader(_BodyReader(store.get(key)), buffer_size=STREAM_BYTES)


def open_seekable(url: str, s3: S3Options | None = None) -> IO[bytes]:
    """Open an object for random access: a local file, or an S3 object read by ranged GETs."""
    location = parse_url(url)
    if location.scheme == "local":
        return _open_local(location.path)
    store, key = _s3_object(url, location.bucket, location.path, s3)
    return io.BufferedReader(RangedReader(store, key), buffer_size=RANGE_BYTES)


def _open_local(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise wrap_os_error(exc, path) from exc


def _s3_object(url: str, bucket: str, key: str, s3: S3Options | None) -> tuple[S3Store, str]:
    if not key:
        raise ValueError(f"S3 URL names a bucket, not an object: {url!r}")
    return S3Store(bucket, "", s3), key


class _BodyReader(io.RawIOBase):
    """The body of one GET as a raw stream (wrap it in a BufferedReader); read faults are the package's."""

    def __init__(self, answer: S3Answer) -> None:
        super().__init__()
        self.answer = answer

    def readable(self) -> bool:
        """Always readable."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` with the next bytes of the body."""
        view = memoryview(buffer).cast("B")
        data = self.answer.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        """Let go of the connection."""
        if not self.closed:
            self.answer.close()
        super().close()


class RangedReader(io.RawIOBase):
    """A seekable read-only view of an S3 object: each read is one ranged GET (wrap it in a BufferedReader).

    The size is read once, with a HEAD, when the reader is made.
    """

    def __init__(self, store: S3Store, key: str) -> None:
        super().__init__()
        self.store, self.key = store, key
        self.size = store.size(key)
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
        with self.store.get(self.key, start=self.position, stop=stop) as answer:
            data = answer.read()
        view[: len(data)] = data
        self.position += len(data)
        return len(data)
