"""Storage URLs: which store a URL names, and whether it lies inside allowed roots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from storage.base import Store
from storage.local import LocalStore, read_file
from storage.s3 import S3Options, S3Store

_ACCEPTED = "s3://bucket[/prefix], file:///absolute/path, or a local path"


@dataclass(frozen=True)
class Location:
    """A parsed storage URL."""

    scheme: Literal["s3", "local"]
    #: The bucket for "s3"; "" for "local".
    bucket: str
    #: "s3": the key or prefix, without leading or trailing "/"; "local": an absolute path.
    path: str


def parse_url(url: str) -> Location:
    """Parse ``url``; ValueError, saying what is accepted, for anything else (http://, ftp://, ...)."""
    if not url:
        raise ValueError(f"empty storage URL; expected {_ACCEPTED}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return Location("local", "", os.path.abspath(url))
    scheme = scheme.lower()
    if scheme == "s3":
        # Split by hand: S3 keys may hold "?" and "#", which urlsplit would take for a query or fragment.
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ValueError(f"S3 URL without a bucket: {url!r}; expected {_ACCEPTED}")
        return Location("s3", bucket, key.strip("/"))
    if scheme == "file":
        host, slash, path = rest.partition("/")
        if host not in ("", "localhost") or not slash:
            raise ValueError(f"file URL must name an absolute local path: {url!r}; expected {_ACCEPTED}")
        # file URLs are percent-encoded (Path.as_uri() writes a space as %20).
        return Location("local", "", os.path.abspath("/" + unquote(path)))
    raise ValueError(f"unsupported storage URL {url!r}; expected {_ACCEPTED}")


def open_store(url: str, s3: S3Options | None = None) -> Store:
    """Open the store rooted at ``url``: an S3 bucket and prefix, or a local directory (made on write)."""
    location = parse_url(url)
    if location.scheme == "s3":
        return S3Store(location.bucket, location.path, s3)
    return LocalStore(location.path)


def read_url(url: str, s3: S3Options | None = None) -> bytes:
    """Read one object by absolute URL: ``s3://bucket/key`` or a local file path."""
    location = parse_url(url)
    if location.scheme == "s3":
        if not location.path:
            raise ValueError(f"S3 URL names a bucket, not an object: {url!r}")
        return S3Store(location.bucket, "", s3).read(location.path)
    return read_file(location.path)


def exists_url(url: str, s3: S3Options | None = None) -> bool:
    """Whether an object exists at an absolute URL: ``s3://bucket/key`` or a local file path."""
    location = parse_url(url)
    if location.scheme == "s3":
        return bool(location.path) and S3Store(location.bucket, "", s3).exists(location.path)
    return os.path.isfile(location.path)


def presign_url(url: str, seconds: int, s3: S3Options | None = None) -> str | None:
    """A presigned GET link to the object at an absolute URL, valid for ``seconds``; None for a local file."""
    location = parse_url(url)
    if location.scheme == "s3":
        if not location.path:
            raise ValueError(f"S3 URL names a bucket, not an object: {url!r}")
        return S3Store(location.bucket, "", s3).presign(location.path, seconds)
    return LocalStore(os.path.dirname(location.path)).presign(os.path.basename(location.path), seconds)


def is_within(url: str, roots: Sequence[str]) -> bool:
    """Return True if ``url`` lies inside one of ``roots`` (a root contains itself).

    Local paths are compared after ``os.path.realpath``, so ".." and symlinks cannot lead out of a root.
    S3 URLs match by bucket and by key prefix on a "/" boundary ("s3://b/data" does not contain
    "s3://b/database/x"), and an S3 key with "." or ".." segments is refused since some servers normalise
    them. Different schemes never match; an unsupported ``url`` is inside nothing, while an unsupported root
    raises ValueError because it is a configuration mistake.
    """
    try:
        target = parse_url(url)
    except ValueError:
        return False
    if target.scheme == "s3" and any(part in (".", "..") for part in target.path.split("/")):
        return False
    real_target = os.path.realpath(target.path) if target.scheme == "local" else ""
    for root in roots:
        base = parse_url(root)
        if base.scheme != target.scheme:
            continue
        if base.scheme == "s3":
            if base.bucket == target.bucket and _under(target.path, base.path):
                return True
        elif _under(real_target, os.path.realpath(base.path)):
            return True
    return False


def _under(path: str, root: str) -> bool:
    # Compare on a "/" boundary so that "data" does not contain "database"; "" (a bucket) contains everything.
    root = root.rstrip("/")
    return not root or path == root or path.startswith(root + "/")
