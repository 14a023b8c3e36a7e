"""The input manifest again, with each item's output added as a column, matched by item id, not position.

JSONL, CSV and Parquet manifests keep their format and all their fields. A WebDataset job gets the per-shard
Parquet that img2dataset writes beside each shard (`00000.tar` -> `00000.parquet`, one row per sample), with
the column added, written as one file per shard under the destination folder.

The added column is `ovis_caption` (captions) or `ovis_output` (output URIs of images) unless `--column`
names another; an existing column of that name is replaced only when its name starts with `ovis_` (a column
an export added before, in a manifest submitted again), any other is kept and the export refused. How each
output was made follows it, as `ovis_kind`, `ovis_prompt`, `ovis_seed`, ... (and `ovis_output_https` with
`--presign`), see jobs.export_rows; those replace columns of their name, always ovis-batch's own.
"""

from __future__ import annotations

import csv
import json
import posixpath
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import select

from jobs.db import session_scope
from jobs.errors import InvalidExport, InvalidParameters, InvalidSource
from jobs.export_destination import Destination, file_target, require_folder
from jobs.export_options import ExportOptions, ExportReport
from jobs.export_rows import ExtraColumns
from jobs.export_writes import refuse_inputs, write_file
from jobs.lifecycle import ItemStatus, JobKind
from jobs.models import Item, Job
from jobs.records import iter_parquet_batches, iter_records, manifest_format, open_parquet
from jobs.settings import Settings
from jobs.sources import Columns, ManifestReader
from jobs.webdataset import is_shard_source, iter_shard_urls, parse_member_url
from storage import S3Options, parse_url

#: Records matched per query.
LOOKUP = 2000
#: img2dataset's per-shard Parquet names each sample in this column.
SHARD_KEY_COLUMN = "key"
#: The column an export adds when `--column` is not given, by job kind.
OUTPUT_COLUMNS = {
    JobKind.CAPTION.value: "ovis_caption",
    JobKind.GENERATE.value: "ovis_output",
    JobKind.EDIT.value: "ovis_output",
}
#: Columns whose name starts with this are ovis-batch's own: an export replaces them.
OWN_PREFIX = "ovis_"


class _Outputs:
    """Outputs of a job's items by id, fetched a batch of ids at a time through the (job_id, key) index, as
    the columns an export adds: the output under `column`, then `extra`."""

    def __init__(
        self, settings: Settings, job_id: str, statuses: tuple[str, ...], column: str, extra: ExtraColumns
    ) -> None:
        self.url = settings.resolved_database_url
        self.job_id = job_id
        self.statuses = list(statuses or (ItemStatus.SUCCEEDED.value,))
        self.column, self.extra = column, extra
        if column in extra.names:
            raise InvalidParameters(
                f"--column {column} is a column the export adds for provenance: name another"
            )
        #: The added columns, in order, and their values for a record without an item.
        self.names = (column, *extra.names)
        self.missing = dict.fromkeys(self.names)

    def lookup(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The added columns of the items with these ids (an id without an item is absent)."""
        with session_scope(self.url) as session:
            rows = session.execute(
                select(Item.key, Item.output, Item.provenance).where(
                    Item.job_id == self.job_id, Item.status.in_(self.statuses), Item.key.in_(keys)
                )
            )
            return {key: {self.column: out} | self.extra.values(out, made) for key, out, made in rows}


def write_manifest(
    settings: Settings, job: Job, destination: Destination, options: ExportOptions
) -> ExportReport:
    """Write the job's input manifest with the output column to `destination`; report the records written."""
    column = options.column or OUTPUT_COLUMNS[job.kind]
    s3 = settings.s3_options()
    extra = ExtraColumns(job.kind, prefix=OWN_PREFIX, presign=options.presign, s3=s3, with_prompt=True)
    outputs = _Outputs(settings, job.id, options.statuses, column, extra)
    fmt = manifest_format(job.source)
    if fmt is None:
        if _is_webdataset(settings, job):
            return _write_shard_manifests(job, destination, outputs, s3)
        raise InvalidParameters(
            f"job {job.id} was submitted from {job.source or 'items given directly'}, which is no manifest; "
            "export it as jsonl, parquet or txt"
        )
    ext = f".{fmt}"
    name = posixpath.basename(job.source.rstrip("/")).removesuffix(".gz")
    target = file_target(destination, ext=ext, default_name=name, what=f"the manifest of job {job.id}")
    refuse_inputs(settings, job, [target])
    reader = ManifestReader(JobKind(job.kind), job.source, Columns(**(job.source_options or {})))
    if fmt == "parquet":

        def write_parquet(path: str) -> int:
            return _parquet(job.source, s3, reader.key, outputs, path, reader.fields())

        count = write_file(target, ext, write_parquet, s3)
    else:

        def write_text(path: str) -> int:
            return _text(job.source, s3, reader, outputs, fmt, path)

        count = write_file(target, ext, write_text, s3)
    return ExportReport(count, "record", target)


def _check_column(column: str, where: str) -> None:
    """Refuse to replace a field of the manifest that ovis-batch did not add."""
    if not column.startswith(OWN_PREFIX):
        raise InvalidExport(
            f"{where} already has a {column!r} field, which an export never replaces (only its own "
            f"{OWN_PREFIX}* columns): name the added column with --column, or leave --column out for the "
            "default"
        )


def _batched(records: Iterator[tuple[int, dict[str, Any]]]) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    batch: list[tuple[int, dict[str, Any]]] = []
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
    fmt: str,
    path: str,
) -> int:
    column = outputs.column
    count = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer: Any = None
        for batch in _batched(iter_records(source, s3)):
            keys = [reader.key(record, count + i) for i, (_, record) in enumerate(batch)]
            found = outputs.lookup(keys)
            if fmt == "csv" and writer is None:
                fields = list(batch[0][1])
                if column in fields:
                    _check_column(column, f"the header of {source}")
                fields += [name for name in outputs.names if name not in fields]
                writer = csv.DictWriter(out, fieldnames=fields)
                writer.writeheader()
            for key, (lineno, record) in zip(keys, batch, strict=True):
                if fmt == "jsonl" and column in record:
                    _check_column(column, f"{source} line {lineno}")
                record.update(found.get(key, outputs.missing))
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
    path: str,
    key_fields: list[str],
) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = open_parquet(source, s3).schema_arrow
    if outputs.column in schema.names:
        _check_column(outputs.column, source)
    added = [pa.field(outputs.column, pa.string()), *outputs.extra.arrow_fields()]
    for field in added:
        if field.name in schema.names:
            schema = schema.remove(schema.get_field_index(field.name))
        schema = schema.append(field)
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        for batch in iter_parquet_batches(source, s3, None):
            table = pa.Table.from_batches([batch])
            table = table.drop_columns([name for name in outputs.names if name in table.column_names])
            records = table.select([name for name in key_fields if name in table.column_names]).to_pylist()
            keys = [key_of(record, count + i) for i, record in enumerate(records)]
            found: dict[str, dict[str, Any]] = {}
            for start in range(0, len(keys), LOOKUP):
                found.update(outputs.lookup(keys[start : start + LOOKUP]))
            rows = [found.get(key, outputs.missing) for key in keys]
            for field in added:
                table = table.append_column(field, pa.array([row[field.name] for row in rows], field.type))
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
    job: Job, destination: Destination, outputs: _Outputs, s3: S3Options
) -> ExportReport:
    folder = require_folder(destination, "a WebDataset job's manifest is one Parquet file per shard")
    manifests = [shard.removesuffix(".tar") + ".parquet" for shard in iter_shard_urls(job.source, s3)]
    targets = _shard_targets(job.source, manifests, folder)
    for manifest in manifests:
        try:
            open_parquet(manifest, s3)
        except InvalidSource as exc:
            raise InvalidSource(
                f"{exc}: a WebDataset job's manifest is the Parquet file img2dataset writes beside each shard"
            ) from None
    count = 0
    for manifest, target in zip(manifests, targets, strict=True):

        def write_shard(path: str, manifest: str = manifest) -> int:
            return _parquet(manifest, s3, _shard_key, outputs, path, [SHARD_KEY_COLUMN])

        count += write_file(target, ".parquet", write_shard, s3)
    return ExportReport(count, "record", folder.url, len(targets))


def _shard_targets(source: str, manifests: list[str], folder: Destination) -> list[str]:
    """Where each shard's manifest goes: its path under the source folder, kept under `folder`; never over
    a shard's own manifest, and never two shards to one file."""
    base = parse_url(source).path if "://" not in source else source.rstrip("/")
    targets = []
    for manifest in manifests:
        inside = manifest.startswith(base + "/") and not is_shard_source(source)
        targets.append(folder.join(manifest[len(base) + 1 :] if inside else posixpath.basename(manifest)))
    inputs = set(manifests) & set(targets)
    if inputs:
        raise InvalidExport(
            f"--out {folder.given} would replace {min(inputs)}, a manifest of the job's shards (an input): "
            "write the manifests to another folder"
        )
    if len(set(targets)) < len(targets):
        raise InvalidExport(
            f"two shards of {source} have the same file name, so their manifests would share a file under "
            f"--out {folder.given}: export them from a folder source, which keeps the shards' folders"
        )
    return targets


def _shard_key(record: dict[str, Any], index: int) -> str:
    return str(record.get(SHARD_KEY_COLUMN))
