"""Manifest files read record by record, exactly as written: JSONL and CSV lines, Parquet rows.

What a record means for an item is the business of jobs.sources; here a record is a dict of fields, read
from a stream of the file (storage keeps memory flat whatever its size) with its line or row number.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import IO, Any

from jobs.errors import InvalidSource
from jobs.objects import iter_lines, open_seekable
from storage import S3Options

MANIFEST_EXTENSIONS = (".jsonl", ".jsonl.gz", ".csv", ".csv.gz", ".parquet")
#: Parquet rows decoded at a time.
PARQUET_BATCH = 10_000


def manifest_format(url: str) -> str | None:
    """The format of a manifest URL: jsonl, csv or parquet (the text formats may be gzipped), else None."""
    name = url.lower()
    for ext in MANIFEST_EXTENSIONS:
        if name.endswith(ext):
            return ext.split(".")[1]
    return None


def describe_value(value: Any) -> str:
    """What a JSON value is, for an error that says what a field holds instead of text."""
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} ({str(value)[:40]})"


def iter_records(url: str, s3: S3Options | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSONL or CSV manifest, streamed, every record exactly as written."""
    fmt = manifest_format(url)
    if fmt == "jsonl":
        yield from _jsonl_records(url, s3)
    elif fmt == "csv":
        yield from _csv_records(url, s3)
    else:
        raise InvalidSource(f"{url} is not a JSONL or CSV manifest")


#: What JSON counts as whitespace around a value.
_JSON_SPACE = " \t\r\n"


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


# The json module's C scanner, called directly: json.loads adds two regular-expression matches per line.
_DECODE = json.JSONDecoder(parse_constant=_not_json).raw_decode


def _jsonl_records(url: str, s3: S3Options | None) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in iter_lines(url, s3):
        try:
            record, end = _DECODE(line)
        except ValueError:
            start = len(line) - len(line.lstrip(_JSON_SPACE))
            if start == len(line):
                continue  # a blank line
            try:
                record, end = _DECODE(line, start)
            except ValueError as exc:
                what = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise InvalidSource(f"{url} line {lineno}: not valid JSON ({what})") from None
        rest = line[end:]
        if rest != "\n" and rest.strip(_JSON_SPACE):
            raise InvalidSource(
                f"{url} line {lineno}: more after the JSON object ({rest[:40].strip()!r}); "
                "a JSONL manifest holds one JSON object per line"
            )
        if type(record) is not dict:
            raise InvalidSource(
                f"{url} line {lineno}: expected a JSON object, found {describe_value(record)}; a JSONL "
                "manifest holds one JSON object per line"
            )
        yield lineno, record


def _csv_records(url: str, s3: S3Options | None) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(line for _, line in iter_lines(url, s3))
    try:
        header = next((row for row in reader if row), None)
        if header is None:
            return
        if len(set(header)) != len(header):
            twice = sorted({name for name in header if header.count(name) > 1})
            raise InvalidSource(f"{url} line {reader.line_num}: the header names {', '.join(twice)} twice")
        width = len(header)
        for row in reader:
            if len(row) != width:
                if not row:
                    continue  # a blank line
                raise InvalidSource(
                    f"{url} line {reader.line_num}: {len(row)} fields where the header has {width}; a field "
                    'that holds a comma, a quote or a line break is written in quotes ("red, please")'
                )
            yield reader.line_num, dict(zip(header, row, strict=True))
    except csv.Error as exc:
        raise InvalidSource(f"{url} line {reader.line_num}: {exc}") from None


def open_parquet(url: str, s3: S3Options | None) -> Any:
    """A pyarrow ParquetFile over a local file or ranged S3 reads (never the whole object in memory)."""
    import pyarrow.parquet as pq

    handle: IO[bytes] = open_seekable(url, s3)
    try:
        return pq.ParquetFile(handle)
    except Exception as exc:  # pyarrow raises several types for a bad file
        handle.close()
        raise InvalidSource(f"{url} is not a readable Parquet file: {exc}") from None


def iter_parquet_batches(url: str, s3: S3Options | None, wanted: list[str] | None) -> Iterator[Any]:
    """Record batches of a Parquet manifest, with only the `wanted` columns that exist (all if None)."""
    yield from parquet_batches(open_parquet(url, s3), wanted)


def parquet_batches(parquet: Any, wanted: list[str] | None) -> Iterator[Any]:
    """Record batches of an open Parquet file, with only the `wanted` columns that exist (all if None)."""
    names = parquet.schema_arrow.names
    columns = None if wanted is None else [name for name in dict.fromkeys(wanted) if name in names]
    yield from parquet.iter_batches(batch_size=PARQUET_BATCH, columns=columns)


def parquet_records(url: str, batch: Any, first_row: int) -> list[dict[str, Any]]:
    """The rows of a batch as dicts; a string column holding invalid UTF-8 is reported by row and column."""
    try:
        records: list[dict[str, Any]] = batch.to_pylist()
        return records
    except UnicodeDecodeError as exc:
        error = exc
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        for row in range(len(column)):
            try:
                column[row].as_py()
            except UnicodeDecodeError as exc:
                raise InvalidSource(
                    f"{url} row {first_row + row}: field {name!r} is not valid UTF-8 ({exc.reason} at byte "
                    f"{exc.start + 1})"
                ) from None
    last = first_row + batch.num_rows - 1
    raise InvalidSource(f"{url} rows {first_row} to {last}: not valid UTF-8 ({error})")
