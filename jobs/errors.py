"""One tree of errors: each class carries the stable `error_code` recorded on an item and decides retry."""

from __future__ import annotations


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


#: Codes recorded by the worker for outcomes that are not exceptions of this tree.
POISONED = "poisoned"
OUT_OF_MEMORY = "out_of_memory"
INTERNAL_ERROR = "internal_error"
CANCELLED = "cancelled"
