"""A job's output location, checked at submit: one form stored, whoever reads it and wherever it runs."""

from __future__ import annotations

import re

from jobs import errors
from jobs.errors import InvalidParameters
from jobs.keys import check_output_prefix
from jobs.settings import Settings
from storage import StorageError, StorageUnavailable, open_store, parse_url

#: S3's bucket naming rules (lower case, digits, dots and hyphens, 3-63 characters).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def output_location(url: str, settings: Settings) -> str:
    """The job's output URL as stored: a local folder made absolute where the producer stands, or
    ``s3://bucket/prefix`` without a trailing slash. Refuses what no worker could write to, naming it."""
    try:
        location = parse_url(url)
    except ValueError as exc:
        raise InvalidParameters(f"--output: {exc}") from None
    if location.scheme == "local":
        normal = location.path
    else:
        if not _BUCKET.fullmatch(location.bucket) or ".." in location.bucket:
            raise InvalidParameters(
                f"--output {url!r}: {location.bucket!r} is not a valid S3 bucket name (3-63 lower-case "
                "letters, digits, dots and hyphens)"
            )
        if any(part in ("", ".", "..") for part in location.path.split("/")) and location.path:
            raise InvalidParameters(f"--output {url!r}: the prefix has an empty, '.' or '..' segment")
        check_output_prefix(location.path)
        normal = f"s3://{location.bucket}" + (f"/{location.path}" if location.path else "")
    try:
        open_store(normal, settings.s3_options()).check_writable()
    except StorageUnavailable as exc:
        raise errors.StorageUnavailable(f"--output {normal}: storage does not answer: {exc}") from None
    except StorageError as exc:
        raise InvalidParameters(f"--output {normal}: {exc}") from None
    return normal
