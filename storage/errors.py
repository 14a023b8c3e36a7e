"""Errors raised by the storage package.

Every class carries a stable ``error_code`` (it ends up on the item) and a ``transient`` flag that tells the
caller whether retrying with backoff can help. Provider errors (botocore, OSError) are wrapped into these at
the package boundary, with the original kept as ``__cause__``.
"""

from __future__ import annotations


class StorageError(Exception):
    """Root of the storage errors: a storage operation failed and retrying will not help."""

    error_code: str = "storage_error"
    transient: bool = False

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        #: The object or store URL the operation was about; never carries credentials.
        self.url = url


class ObjectNotFound(StorageError):
    """The object (or its bucket) does not exist: a missing input, not worth a retry."""

    error_code = "input_missing"


class AccessDenied(StorageError):
    """The credentials are missing, invalid or not allowed to do this: a configuration problem."""

    error_code = "access_denied"


class StorageUnavailable(StorageError):
    """The store could not be reached or kept failing (connection, timeout, 5xx, throttling) after retries."""

    error_code = "storage_unavailable"
    transient = True
