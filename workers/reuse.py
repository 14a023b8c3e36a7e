"""Reusing earlier outputs (`--skip-existing`) only where they are the output this item would get.

Every recorded success carries a fingerprint of everything its output depends on: the job kind, the
input's bytes (a digest of what the worker read), the request as the model got it (prompt or instruction
actually used, every parameter, a caption's `max_pixels` too, the seed), the backend and model (path and
revision), ovis-batch's version, the output location and, for images, the format and quality the output is
written in (a PNG is never reused for a JPEG). An item of a job that reuses outputs takes an earlier item's
output, and its provenance, only when the fingerprints are equal, and, for images, only when that output is
still in storage. Outputs recorded before formats were fingerprinted are never reused: nothing says how they
were encoded, nor records their provenance. A parameter the request leaves unset (None: the model's own
default) is left out, so that a parameter added later keeps the fingerprints of outputs made before it
existed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Collection
from importlib import metadata
from typing import Any

from sqlalchemy.orm import Session

from jobs.settings import Settings
from jobs.state import reusable_outputs
from storage import S3Options, StorageError, exists_url

#: The request fields that are not parameters (the input is fingerprinted by its bytes).
_NOT_PARAMETERS = frozenset({"image", "prepared"})


def input_digest(data: bytes) -> str:
    """A digest of an input's bytes."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@functools.cache
def version() -> str:
    """ovis-batch's version, as installed."""
    try:
        return metadata.version("ovis-batch")
    except metadata.PackageNotFoundError:
        return "unknown"


def model_identity(settings: Settings) -> str:
    """What names the model a worker runs: backend, weights path or hub id, revision, ovis-batch version."""
    return f"{settings.backend}|{settings.model_path}@{settings.model_revision or ''}|ovis-batch {version()}"


def fingerprint(
    *,
    kind: str,
    request: Any,
    input_digest: str | None,
    model: str,
    output_url: str,
    image_format: str | None = None,
    quality: int | None = None,
) -> str:
    """The fingerprint of one item's output (see the module's docstring); `image_format` and `quality` are
    None for captions."""
    parameters = {
        field.name: value
        for field in dataclasses.fields(request)
        if field.name not in _NOT_PARAMETERS and (value := getattr(request, field.name)) is not None
    }
    described = {
        "kind": kind,
        "input": input_digest,
        "request": parameters,
        "model": model,
        "output": output_url,
        "encoding": [image_format, quality],
    }
    text = json.dumps(described, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def find_reusable(
    session: Session,
    *,
    job_id: str,
    fingerprints: Collection[str],
    images: bool,
    s3: S3Options | None,
) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Outputs of other jobs' succeeded items, with their provenance, per fingerprint; image outputs only if
    still in storage."""
    found = reusable_outputs(session, job_id=job_id, fingerprints=fingerprints)
    if not images:
        return found
    kept = {}
    for print_, (url, provenance) in found.items():
        try:
            if exists_url(url, s3):
                kept[print_] = (url, provenance)
        except StorageError:
            continue  # cannot tell: compute it again rather than point at what may be gone
    return kept
