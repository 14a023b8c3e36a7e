"""Object storage behind one interface: S3 (any S3-compatible endpoint) and local directories.

Open a store with ``open_store(url)``, read single objects with ``read_url(url)``, and confine inputs to
allowed locations with ``is_within(url, roots)``. Failures raise ``StorageError`` subclasses whose
``error_code`` and ``transient`` say whether to fail the item or retry.
"""

from storage.base import Store
from storage.errors import AccessDenied, ObjectNotFound, StorageError, StorageUnavailable
from storage.local import LocalStore
from storage.s3 import S3Options, S3Store, s3_client
from storage.urls import exists_url, is_within, open_store, parse_url, read_url

__all__ = [
    "AccessDenied",
    "LocalStore",
    "ObjectNotFound",
    "S3Options",
    "S3Store",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "exists_url",
    "is_within",
    "open_store",
    "parse_url",
    "read_url",
    "s3_client",
]
