"""Object storage behind one interface: S3 (any S3-compatible endpoint) and local directories.

Open a store with ``open_store(url)``, read single objects with ``read_url(url)``, large ones as streams with
``open_stream(url)`` (sequential) or ``open_seekable(url)`` (ranged reads), pin a local file before reading it
with ``LocalFile``, link objects for a while with ``presign_url(url, seconds)`` (S3; none for local files),
and confine inputs to allowed locations with ``is_within(url, roots)``. Failures raise
``StorageError`` subclasses whose ``error_code`` and ``transient`` say whether to fail the item or retry;
provider errors (botocore, OSError) never leave the package.
"""

from storage.base import MAX_PRESIGN_SECONDS, Store
from storage.errors import AccessDenied, ObjectNotFound, StorageError, StorageUnavailable
from storage.local import LocalFile, LocalStore
from storage.s3 import S3Answer, S3Options, S3Store, s3_client
from storage.streams import RangedReader, open_seekable, open_stream
from storage.urls import exists_url, is_within, open_store, parse_url, presign_url, read_url

__all__ = [
    "MAX_PRESIGN_SECONDS",
    "AccessDenied",
    "LocalFile",
    "LocalStore",
    "ObjectNotFound",
    "RangedReader",
    "S3Answer",
    "S3Options",
    "S3Store",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "exists_url",
    "is_within",
    "open_seekable",
    "open_store",
    "open_stream",
    "parse_url",
    "presign_url",
    "read_url",
    "s3_client",
]
