"""Exports of a job, streamed from SQL with flat memory, also while the job runs.

- `jsonl`, `parquet`: one row per item: id, input, prompt (as the model got it), output (caption or output
  URI), status, error, then how the output was made and, with `--presign`, a link (see jobs.export_rows).
- `txt`: a caption file per image, `photo.jpg` -> `photo.txt` (see jobs.export_captions).
- `manifest`: the job's input manifest again, with the output and its provenance added as columns (see
  jobs.export_manifest).

Where each export goes follows one rule for `--out` (see jobs.export_destination). One-file exports are
written whole to a temporary file and then renamed over (local) or uploaded as (S3) the destination, which
they replace; they never replace a folder or an input of the job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import select

from jobs.db import session_scope
from jobs.errors import InvalidExport, JobNotFound
from jobs.export_captions import write_caption_files
from jobs.export_destination import file_target, parse_destination
from jobs.export_manifest import write_manifest
from jobs.export_options import ROWS_PER_FETCH, ExportOptions, ExportReport
from jobs.export_rows import ExtraColumns, row_prompt
from jobs.export_writes import refuse_inputs, write_file
from jobs.models import Item, Job
from jobs.settings import Settings
from storage import open_store

#: Every row's own columns; ExtraColumns follow them.
COLUMNS = ("id", "input", "prompt", "output", "status", "error_code", "error", "attempts", "gpu_seconds")
#: The extension of each one-file format's destination.
_EXTENSIONS = {"jsonl": ".jsonl", "parquet": ".parquet"}


def load_job(settings: Settings, job_id: str) -> Job:
    """The job's row (detached), or JobNotFound."""
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        session.expunge(job)
        return job


def iter_rows(
    settings: Settings,
    job_id: str,
    statuses: Sequence[str] = (),
    order_by_seq: bool = True,
    extra: ExtraColumns | None = None,
    *,
    after_seq: int | None = None,
    through_seq: int | None = None,
) -> Iterator[dict[str, Any]]:
    """The job's items in source order, as export rows with the `extra` columns (default: the provenance of
    the job's kind), streamed from the database; only those with `after_seq < seq <= through_seq` where
    given, so that a page of rows is a range of the (job_id, seq) key rather than an offset to skip."""
    extra = extra or ExtraColumns(load_job(settings, job_id).kind)
    items = Item.__table__.c
    query = select(
        items.key,
        items.source,
        items.text,
        items.output,
        items.status,
        items.error_code,
        items.error_message,
        items.attempts,
        items.gpu_seconds,
        items.provenance,
    ).where(items.job_id == job_id)
    if statuses:
        query = query.where(items.status.in_(list(statuses)))
    if after_seq is not None:
        query = query.where(items.seq > after_seq)
    if through_seq is not None:
        query = query.where(items.seq <= through_seq)
    if order_by_seq:
        query = query.order_by(items.seq)
    with session_scope(settings.resolved_database_url) as session:
        # Core rows over a server-side cursor: a million rows stream in flat memory, without ORM overhead.
        connection = session.connection().execution_options(yield_per=ROWS_PER_FETCH)
        for *fields, made in connection.execute(query):
            key, source, text, output, status, code, error, attempts, spent = fields
            own = (key, source, row_prompt(text, made), output, status, code, error, attempts, spent)
            yield dict(zip(COLUMNS, own, strict=True)) | extra.values(output, made)


def write_jsonl(rows: Iterator[dict[str, Any]], path: str) -> int:
    """Write rows as JSON lines; return how many."""
    count = 0
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    with open(path, "w", encoding="utf-8") as out:
        lines: list[str] = []
        for row in rows:
            lines.append(dumps(row))
            if len(lines) == ROWS_PER_FETCH:
                out.write("\n".join(lines) + "\n")
                count += len(lines)
                lines.clear()
        if lines:
            out.write("\n".join(lines) + "\n")
            count += len(lines)
    return count


def write_parquet(rows: Iterator[dict[str, Any]], path: str, extra: ExtraColumns) -> int:
    """Write rows as Parquet, one row group per fetch; return how many."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"attempts": pa.int32(), "gpu_seconds": pa.float64()}
    own = [pa.field(name, types.get(name, pa.string())) for name in COLUMNS]
    schema = pa.schema(own + extra.arrow_fields())
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= ROWS_PER_FETCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
                batch.clear()
        if batch or count == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


def write_export(
    settings: Settings, job_id: str, out: str | None, options: ExportOptions | None = None
) -> ExportReport:
    """Export a job to `out` by the `--out` rule (None: caption files beside the images); say what was
    written."""
    options = options or ExportOptions()
    job = load_job(settings, job_id)
    if options.fmt == "txt":
        folder = None if out is None else parse_destination(out)
        return write_caption_files(settings, job, folder, options.statuses)
    if out is None:
        raise InvalidExport(
            f"the {options.fmt} export needs --out: a {_EXTENSIONS.get(options.fmt, 'file')} file, or a "
            "folder ending in /"
        )
    destination = parse_destination(out)
    if options.fmt == "manifest":
        return write_manifest(settings, job, destination, options)
    ext = _EXTENSIONS[options.fmt]
    target = file_target(destination, ext=ext, default_name=f"{job_id}{ext}", what=f"a {options.fmt} export")
    refuse_inputs(settings, job, [target])
    s3 = settings.s3_options()
    extra = ExtraColumns(job.kind, presign=options.presign, s3=s3)

    def write(path: str) -> int:
        rows = iter_rows(settings, job_id, options.statuses, extra=extra)
        return write_jsonl(rows, path) if options.fmt == "jsonl" else write_parquet(rows, path, extra)

    count = write_file(target, ext, write, s3)
    return ExportReport(count, "row", target)


def export_job(settings: Settings, job_id: str, out: str | None, options: ExportOptions | None = None) -> int:
    """Export a job to `out` (see `write_export`); return how many rows, records or caption files it wrote."""
    return write_export(settings, job_id, out, options).count


def write_results(settings: Settings, job_id: str, fmt: str = "jsonl") -> str:
    """Write a job's results next to its outputs (`{output_url}/{job_id}/results.{fmt}`); return the URL."""
    job = load_job(settings, job_id)
    url = open_store(job.output_url, settings.s3_options()).url_for(f"{job_id}/results.{fmt}")
    export_job(settings, job_id, url, ExportOptions(fmt=fmt))
    with session_scope(settings.resolved_database_url) as session:
        row = session.get(Job, job_id)
        if row is not None:
            row.export_url = url
    return url
