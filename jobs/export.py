"""Exports streamed from SQL with flat memory: JSONL and Parquet of id, input, output, status, error."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from jobs.db import session_scope
from jobs.errors import InvalidParameters, JobNotFound
from jobs.models import Item, Job
from jobs.settings import Settings
from storage import open_store

FORMATS = ("jsonl", "parquet")
_ROWS_PER_FETCH = 10_000
COLUMNS = ("id", "input", "prompt", "output", "status", "error_code", "error", "attempts")


def iter_rows(settings: Settings, job_id: str) -> Iterator[dict[str, Any]]:
    """Every item of a job in source order, as export rows, streamed from the database."""
    url = settings.resolved_database_url
    with session_scope(url) as session:
        if session.get(Job, job_id) is None:
            raise JobNotFound(f"no job {job_id}")
        query = (
            select(
                Item.key,
                Item.source,
                Item.text,
                Item.output,
                Item.status,
                Item.error_code,
                Item.error_message,
                Item.attempts,
            )
            .where(Item.job_id == job_id)
            .order_by(Item.seq)
            .execution_options(yield_per=_ROWS_PER_FETCH)
        )
        for row in session.execute(query):
            yield dict(zip(COLUMNS, row, strict=True))


def write_local(settings: Settings, job_id: str, path: str, fmt: str) -> int:
    """Write a job's rows to a local file; return the number of rows."""
    if fmt not in FORMATS:
        raise InvalidParameters(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "jsonl":
        count = 0
        with open(path, "w", encoding="utf-8") as out:
            for row in iter_rows(settings, job_id):
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        return count
    return _write_parquet(iter_rows(settings, job_id), path)


def _write_parquet(rows: Iterator[dict[str, Any]], path: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, pa.int32() if name == "attempts" else pa.string()) for name in COLUMNS])
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= _ROWS_PER_FETCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
                batch.clear()
        if batch or count == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


def write_results(settings: Settings, job_id: str, fmt: str = "jsonl") -> str:
    """Write a job's results next to its outputs (`{output_url}/{job_id}/results.{fmt}`); return the URL."""
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        output_url = job.output_url
    fd, tmp = tempfile.mkstemp(suffix=f".{fmt}")
    os.close(fd)
    try:
        write_local(settings, job_id, tmp, fmt)
        content_type = "application/x-ndjson" if fmt == "jsonl" else "application/vnd.apache.parquet"
        url = open_store(output_url, settings.s3_options()).upload_file(
            f"{job_id}/results.{fmt}", tmp, content_type
        )
    finally:
        os.unlink(tmp)
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        if job is not None:
            job.export_url = url
    return url
