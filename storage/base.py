"""The interface every store implements, and the key rules they share."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator

DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: The longest a presigned link may live: S3's limit for links signed with Signature Version 4 (7 days).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


class Store(ABC):
    """Objects under one root (an S3 bucket and prefix, or a local directory), addressed by relative keys.

    Keys are "/"-separated, relative to the root, with no empty, "." or ".." segments; a key that breaks
    these rules raises ValueError on every store, so a key that works locally also works on S3 and no key
    can reach outside its root.
    """

    #: The store's base URL: "s3://bucket/prefix" or an absolute local directory path.
    url: str

    @abstractmethod
    def read(self, key: str) -> bytes:
        """Return the object's bytes; ObjectNotFound if it does not exist."""

    @abstractmethod
    def write(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        """Store ``data`` under ``key``, replacing any existing object, and return ``url_for(key)``."""

    @abstractmethod
    def upload_file(
        self, key: str, path: str | os.PathLike[str], content_type: str = DEFAULT_CONTENT_TYPE
    ) -> str:
        """Store the contents of the local file ``path`` under ``key`` (made for large files)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Return whether an object is stored under ``key``."""

    @abstractmethod
    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys that start with ``prefix`` (a plain string prefix, as on S3), streamed."""

    @abstractmethod
    def url_for(self, key: str) -> str:
        """Return the absolute URL of ``key``: "s3://bucket/prefix/key" or "/abs/dir/key"."""

    @abstractmethod
    def check_writable(self) -> None:
        """Raise the package's error if writes cannot succeed now: a missing or refused bucket, a folder that
        cannot be made or written."""

    @abstractmethod
    def presign(self, key: str, seconds: int) -> str | None:
        """A link anyone may GET ``key`` with for ``seconds`` (1 to MAX_PRESIGN_SECONDS), or None where the
        store has no links to give (local files)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under ``key``; removing a missing object is not an error (as on S3)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid relative key, else raise ValueError saying why."""
    if not key:
        raise ValueError("storage key must not be empty")
    if "\x00" in key:
        raise ValueError(f"storage key must not contain NUL: {key!r}")
    if key.startswith("/"):
        raise ValueError(f"storage key must be relative, not absolute: {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"storage key must not contain empty, '.' or '..' segments: {key!r}")
    return key


def check_presign_seconds(seconds: int) -> int:
    """Return ``seconds`` if a presigned link may live that long, else raise ValueError saying the range."""
    if not 1 <= seconds <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"a presigned link lives 1 to {MAX_PRESIGN_SECONDS} seconds (7 days), not {seconds}")
    return seconds


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is "" or a valid key, optionally ending in "/"; else raise ValueError."""
    if prefix:
        check_key(prefix.removesuffix("/"))
    return prefix
