"""One tree of errors: each class carries the stable `error_code` recorded on an item and decides retry.

    OvisBatchError                   error
    ├── BadInput                     bad_input            the item fails; retrying will not help
    │   ├── InvalidImage             invalid_image
    │   ├── ImageTooLarge            image_too_large
    │   ├── UnsupportedImage         unsupported_image
    │   ├── InputMissing             input_missing        <- storage.ObjectNotFound or a refused read (input)
    │   ├── InputNotAllowed          input_not_allowed
    │   ├── InvalidParameters        invalid_parameters
    │   │   └── InvalidExport        invalid_export
    │   └── InvalidSource            invalid_source       <- storage.ObjectNotFound or a refused read (source)
    ├── StorageFailed                storage_error        <- any other storage.StorageError (output)
    │   └── AccessDenied             access_denied        <- storage.AccessDenied
    ├── Transient                    transient            handed back and retried with backoff
    │   ├── StorageUnavailable       storage_unavailable  <- storage.StorageUnavailable
    │   └── DatabaseUnavailable      database_unavailable
    └── JobNotFound                  job_not_found

The storage package has a tree of its own (it depends on no other package of the project). Its errors are
turned into this tree once, where they meet the domain, by `from_storage`: what a refusal means depends on
what was being read or written (an item's input, a source at submission, or an output). The backends'
errors (gpu_model.BackendError) are sorted by the worker, which jobs never imports: out of memory splits the
micro-batch, an invalid request fails the item, and what the codes below do not name ends as
`internal_error`.
"""

from __future__ import annotations

from typing import Literal

import storage

#: What a storage operation was for: an item's input (read by a worker), a source (read at submission or by
#: an export), or an output (anything written).
StorageRole = Literal["input", "source", "output"]


class OvisBatchError(Exception):
    """Root of the project's errors."""

    error_code = "error"
    #: Transient errors are retried with backoff; the others end the item.
    transient = False


class BadInput(OvisBatchError):
    """The item's input cannot be used; retrying will not help."""

    error_code = "bad_input"


class InvalidImage(BadInput):
    """The bytes are not a decodable image (truncated, empty, not an image)."""

    error_code = "invalid_image"


class ImageTooLarge(BadInput):
    """The image exceeds the byte or pixel limits (checked before decoding)."""

    error_code = "image_too_large"


class UnsupportedImage(BadInput):
    """The image decodes but its mode or layout is refused."""

    error_code = "unsupported_image"


class InputMissing(BadInput):
    """The input object does not exist."""

    error_code = "input_missing"


class InputNotAllowed(BadInput):
    """The input lies outside the configured input roots."""

    error_code = "input_not_allowed"


class InvalidParameters(BadInput):
    """Job or item parameters outside what is allowed; raised at submit."""

    error_code = "invalid_parameters"


class InvalidSource(BadInput):
    """A source or manifest cannot be read; the message names the line."""

    error_code = "invalid_source"


class InvalidExport(InvalidParameters):
    """An export cannot be written as asked (destination, format or column); the message says which rule."""

    error_code = "invalid_export"


class StorageFailed(OvisBatchError):
    """Storage refused an operation for good (a full disk, a read-only folder, a missing bucket); the message
    says which."""

    error_code = "storage_error"


class AccessDenied(StorageFailed):
    """Storage refused the credentials, or these credentials may not do this: a configuration problem."""

    error_code = "access_denied"


class Transient(OvisBatchError):
    """A service was unavailable; the work is handed back and retried with backoff."""

    error_code = "transient"
    transient = True


class StorageUnavailable(Transient):
    """Object storage did not answer."""

    error_code = "storage_unavailable"


class DatabaseUnavailable(Transient):
    """The database did not answer."""

    error_code = "database_unavailable"


class JobNotFound(OvisBatchError):
    """No job with that id."""

    error_code = "job_not_found"


def from_storage(exc: storage.StorageError, *, role: StorageRole, url: str | None = None) -> OvisBatchError:
    """The error of this tree for a storage error met while handling `url` (default: the one the storage
    error names) in `role`; the caller raises it `from exc`.

    Unavailable storage is transient and refused credentials are access_denied whatever the role. A missing
    or unreadable object is the item's input_missing when it is an input, invalid_source when it is a source,
    and storage_error when it is an output.
    """
    where = url or exc.url or "the object"
    if isinstance(exc, storage.StorageUnavailable):
        return StorageUnavailable(str(exc))
    if isinstance(exc, storage.AccessDenied):
        return AccessDenied(str(exc))
    if role == "output":
        return StorageFailed(str(exc))
    missing = isinstance(exc, storage.ObjectNotFound)
    message = f"{where} does not exist" if missing else f"{where} cannot be read: {exc}"
    return InputMissing(message) if role == "input" else InvalidSource(message)


#: Codes recorded by the worker for outcomes that are not exceptions of this tree.
POISONED = "poisoned"
OUT_OF_MEMORY = "out_of_memory"
INTERNAL_ERROR = "internal_error"
CANCELLED = "cancelled"
