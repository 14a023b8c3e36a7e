"""How an export's files are written: whole, then renamed or uploaded into place, and never over an input of
the job."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence

from sqlalchemy import select

from jobs.db import session_scope
from jobs.errors import InvalidExport
from jobs.lifecycle import JobKind
from jobs.models import Item, Job
from jobs.settings import Settings
from storage import S3Options, open_store, parse_url

_CONTENT_TYPES = {
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
    "csv": "text/csv",
}


def write_file(out: str, suffix: str, write: Callable[[str], int], s3: S3Options) -> int:
    """Run `write(path)` into `out`: directly for a local path, via a temporary file for a storage URL."""
    location = parse_url(out)
    if location.scheme == "local":
        # Written beside the target and renamed over it: a reader never sees half a file.
        folder = os.path.dirname(location.path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=f"{suffix}.ovis-tmp")
        os.close(fd)
        try:
            count = write(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, location.path)
        except BaseException:
            os.unlink(tmp)
            raise
        return count
    folder, _, name = out.rstrip("/").rpartition("/")
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    try:
        count = write(tmp)
        content_type = _CONTENT_TYPES.get(suffix.lstrip("."), "application/octet-stream")
        open_store(folder, s3).upload_file(name, tmp, content_type)
    finally:
        os.unlink(tmp)
    return count


def refuse_inputs(settings: Settings, job: Job, targets: Sequence[str]) -> None:
    """Refuse to write any of `targets` (file URLs) that is an input of `job`: its source or an item's."""
    normal = {_normal(target): target for target in targets}
    sources = {_normal(job.source)} if job.source else set()
    used = None
    if job.kind != JobKind.GENERATE.value:  # generate items have no input
        with session_scope(settings.resolved_database_url) as session:
            used = session.scalars(
                select(Item.source).where(Item.job_id == job.id, Item.source.in_(list(normal))).limit(1)
            ).first()
    for url in (*sorted(sources & normal.keys()), used):
        if url is not None:
            raise InvalidExport(
                f"--out {normal[url]} is an input of job {job.id}; an export never replaces an input: "
                "write it elsewhere"
            )


def _normal(url: str) -> str:
    try:
        location = parse_url(url)
    except ValueError:
        return url
    if location.scheme == "s3":
        return f"s3://{location.bucket}/{location.path}"
    return location.path
