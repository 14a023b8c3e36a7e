"""Errors a backend raises; the worker sorts them into retry, split or fail."""


class BackendError(Exception):
    """Root of backend errors."""

    error_code = "backend_error"


class BackendLoadError(BackendError):
    """The model could not be loaded; the message says what to do about it."""

    error_code = "backend_load_failed"


class BackendOutOfMemory(BackendError):
    """The accelerator ran out of memory on a micro-batch; a smaller batch may fit."""

    error_code = "out_of_memory"


class BackendInvalidRequest(BackendError, ValueError):
    """A request outside what the model accepts; the item fails and a retry cannot help."""

    error_code = "invalid_parameters"
