"""The input manifest again, with each item's output added as a column, matched by item id, not position.

JSONL, CSV and Parquet manifests keep their format and all their fields. A WebDataset job gets the per-shard
Parquet that img2dataset writes beside each shard (`00000.tar` -> `00000.parquet`, one row per sample), with
the column added, written as one file per shard under the destination folder.
"""

from __future__ import annotations

import csv
import json
import posixpath
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import select

from jobs.db import session_scope
from jobs.errors import InvalidParameters, InvalidSource
from jobs.export import ExportOptions, load_job, write_file
from jobs.lifecycle import ItemStatus, JobKind
from jobs.models import Item, Job
from jobs.settings import Settings
from jobs.sources import (
    Columns,
    ManifestReader,
    iter_parquet_batches,
    iter_records,
    manifest_format,
    open_parquet,
)
from jobs.webdataset import is_shard_source, iter_shard_urls, parse_member_url
from storage import S3Options

#: Records matched per query.
LOOKUP = 2000
#: img2dataset's per-shard Parquet names each sample in this column.
SHARD_KEY_COLUMN = "key"


class _Outputs:
    """Outputs of a job's items by id, fetched a batch of ids at a time through the (job_id, key) index."""

    def __init__(self, settings: Settings, job_id: str, statuses: tuple[str, ...]) -> None:
        self.url = settings.resolved_database_url
        self.job_id = job_id
        self.statuses = list(statuses or (ItemStatus.SUCCEEDED.value,))

    def lookup(self, keys: list[str]) -> dict[str, str | None]:
        with session_scope(self.url) as session:
            rows = session.execute(
                select(Item.key, Item.output).where(
                    Item.job_id == self.job_id, Item.status.in_(self.statuses), Item.key.in_(keys)
                )
            )
            return {key: output for key, output in rows}


def write_manifest(settings: Settings, job_id: str, out: str, options: ExportOptions) -> int:
    """Write the job's input manifest with the output column to `out`; return how many records."""
    job = load_job(settings, job_id)
    column = options.column or ("caption" if job.kind == JobKind.CAPTION.value else "output")
    outputs = _Outputs(settings, job_id, options.statuses)
    s3 = settings.s3_options()
    fmt = manifest_format(job.source)
    if fmt is None:
        if _is_webdataset(settings, job):
            return _write_shard_manifests(job, out, column, options.column is not None, outputs, s3)
        raise InvalidParameters(
            f"job {job_id} was submitted from {job.source or 'items given directly'}, which is no manifest; "
            "export it as jsonl, parquet or txt"
        )
    reader = ManifestReader(JobKind(job.kind), job.source, Columns(**(job.source_options or {})))
    explicit = options.column is not None
    if fmt == "parquet":

        def write_parquet(path: str) -> int:
            return _parquet(job.source, s3, reader.key, outputs, column, explicit, path, reader.fields())

        return write_file(out, ".parquet", write_parquet, s3)

    def write_text(path: str) -> int:
        return _text(job.source, s3, reader, outputs, column, explicit, fmt, path)

    return write_file(out, ".jsonl" if fmt == "jsonl" else ".csv", write_text, s3)


def _collision(column: str, explicit: bool) -> None:
    if not explicit:
        raise InvalidParameters(
            f"the manifest already has a {column!r} field; name the added column with --column "
            f"(naming {column!r} explicitly replaces it)"
        )


def _batched(records: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) == LOOKUP:
            yield batch
            batch = []
    if batch:
        yield batch


def _text(
    source: str,
    s3: S3Options,
    reader: ManifestReader,
    outputs: _Outputs,
    column: str,
    explicit: bool,
    fmt: str,
    path: str,
) -> int:
    count = 0
    records = (record for _, record in iter_records(source, s3))
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer: Any = None
        for batch in _batched(records):
            keys = [reader.key(record, count + i) for i, record in enumerate(batch)]
            found = outputs.lookup(keys)
            if fmt == "csv" and writer is None:
                fields = list(batch[0])
                if column in fields:
                    _collision(column, explicit)
                else:
                    fields.append(column)
                writer = csv.DictWriter(out, fieldnames=fields)
                writer.writeheader()
            for key, record in zip(keys, batch, strict=True):
                if column in record and fmt == "jsonl":
                    _collision(column, explicit)
                record[column] = found.get(key)
                if fmt == "jsonl":
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    writer.writerow(record)
            count += len(batch)
    return count


def _parquet(
    source: str,
    s3: S3Options,
    key_of: Callable[[dict[str, Any], int], str],
    outputs: _Outputs,
    column: str,
    explicit: bool,
    path: str,
    key_fields: list[str],
) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = open_parquet(source, s3).schema_arrow
    if column in schema.names:
        _collision(column, explicit)
        schema = schema.remove(schema.get_field_index(column))
    schema = schema.append(pa.field(column, pa.string()))
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        for batch in iter_parquet_batches(source, s3, None):
            table = pa.Table.from_batches([batch])
            if column in table.column_names:
                table = table.drop_columns([column])
            records = table.select([name for name in key_fields if name in table.column_names]).to_pylist()
            keys = [key_of(record, count + i) for i, record in enumerate(records)]
            found: dict[str, str | None] = {}
            for start in range(0, len(keys), LOOKUP):
                found.update(outputs.lookup(keys[start : start + LOOKUP]))
            table = table.append_column(column, pa.array([found.get(k) for k in keys], pa.string()))
            writer.write_table(table.select(schema.names).cast(schema))
            count += len(keys)
    return count


def _is_webdataset(settings: Settings, job: Job) -> bool:
    if is_shard_source(job.source):
        return True
    with session_scope(settings.resolved_database_url) as session:
        first = session.scalar(select(Item.source).where(Item.job_id == job.id).order_by(Item.seq).limit(1))
    return first is not None and parse_member_url(first) is not None


def _write_shard_manifests(
    job: Job, out: str, column: str, explicit: bool, outputs: _Outputs, s3: S3Options
) -> int:
    count = 0
    for shard in iter_shard_urls(job.source, s3):
        manifest = shard.removesuffix(".tar") + ".parquet"
        try:
            open_parquet(manifest, s3)
        except InvalidSource as exc:
            raise InvalidSource(
                f"{exc}: a WebDataset job's manifest is the Parquet file img2dataset writes beside each shard"
            ) from None

        def write_shard(path: str, manifest: str = manifest) -> int:
            return _parquet(manifest, s3, _shard_key, outputs, column, explicit, path, [SHARD_KEY_COLUMN])

        count += write_file(f"{out.rstrip('/')}/{posixpath.basename(manifest)}", ".parquet", write_shard, s3)
    return count


def _shard_key(record: dict[str, Any], index: int) -> str:
    return str(record.get(SHARD_KEY_COLUMN))
