"""Sources of items: image folders and S3 prefixes, prompt files, and JSONL / CSV / Parquet manifests.

Every source is a generator: items stream into submission without the whole source in memory.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from collections.abc import Iterator
from typing import Any

from jobs.errors import InvalidSource
from jobs.lifecycle import JobKind
from jobs.submit import ITEM_PARAMS, ItemSpec
from storage import S3Options, open_store, parse_url, read_url

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MANIFEST_EXTENSIONS = frozenset({".jsonl", ".csv", ".parquet"})
ID_FIELDS = ("id", "key", "custom_id")
IMAGE_FIELDS = ("image", "image_url", "url", "path", "file")
TEXT_FIELDS: dict[JobKind, tuple[str, ...]] = {
    JobKind.CAPTION: ("prompt", "question"),
    JobKind.GENERATE: ("prompt", "text", "caption"),
    JobKind.EDIT: ("instruction", "prompt", "edit"),
}


def _ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def iter_images(url: str, s3: S3Options | None) -> Iterator[ItemSpec]:
    """Images under a folder or S3 prefix, recursively, by extension; the id is the relative path."""
    store = open_store(url, s3)
    for key in store.iter_keys():
        if _ext(key) in IMAGE_EXTENSIONS:
            yield ItemSpec(key=key, source=store.url_for(key))


def iter_prompt_lines(url: str, s3: S3Options | None) -> Iterator[ItemSpec]:
    """One prompt per non-empty line of a text file; the id is the line number."""
    for lineno, line in _lines(url, s3):
        if line.strip():
            yield ItemSpec(key=f"{lineno:06d}", text=line.strip())


def _lines(url: str, s3: S3Options | None) -> Iterator[tuple[int, str]]:
    location = parse_url(url)
    if location.scheme == "local":
        try:
            with open(location.path, encoding="utf-8") as handle:
                yield from enumerate(handle, start=1)
        except FileNotFoundError:
            raise InvalidSource(f"{url} does not exist") from None
        except UnicodeDecodeError as exc:
            raise InvalidSource(f"{url} is not UTF-8 text: {exc}") from None
        return
    text = read_url(url, s3).decode("utf-8")
    yield from enumerate(io.StringIO(text), start=1)


def _resolve_image(ref: str, manifest_url: str) -> str:
    """An image reference relative to the manifest's folder, unless it is absolute."""
    if "://" in ref or ref.startswith("/"):
        return ref
    location = parse_url(manifest_url)
    if location.scheme == "s3":
        base = posixpath.dirname(location.path)
        return f"s3://{location.bucket}/{posixpath.join(base, ref) if base else ref}"
    return os.path.join(os.path.dirname(location.path), ref)


def _first(record: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = record.get(name)
        if value not in (None, ""):
            return value
    return None


def record_to_item(
    kind: JobKind, record: dict[str, Any], where: str, manifest_url: str, index: int
) -> ItemSpec:
    """Turn one manifest record into an item; raise InvalidSource naming `where` when it cannot."""
    key = _first(record, ID_FIELDS)
    image = _first(record, IMAGE_FIELDS)
    text = _first(record, TEXT_FIELDS[kind]) or ""
    if kind is not JobKind.GENERATE:
        if image is None:
            raise InvalidSource(f"{where}: no image field (one of {', '.join(IMAGE_FIELDS)})")
        source = _resolve_image(str(image), manifest_url)
    else:
        source = ""
        if not text:
            raise InvalidSource(f"{where}: no prompt field (one of {', '.join(TEXT_FIELDS[kind])})")
    if key is None:
        key = str(image) if image is not None else f"{index:06d}"
    params = {name: record[name] for name in ITEM_PARAMS[kind] if record.get(name) not in (None, "")}
    return ItemSpec(key=str(key), source=source, text=str(text), params=params or None)


def iter_jsonl(kind: JobKind, url: str, s3: S3Options | None) -> Iterator[ItemSpec]:
    """Items from a JSONL manifest, one JSON object per line."""
    index = 0
    for lineno, line in _lines(url, s3):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidSource(f"{url} line {lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise InvalidSource(f"{url} line {lineno}: expected a JSON object")
        yield record_to_item(kind, record, f"{url} line {lineno}", url, index)
        index += 1


def iter_csv(kind: JobKind, url: str, s3: S3Options | None) -> Iterator[ItemSpec]:
    """Items from a CSV manifest with a header row."""
    reader = csv.DictReader(line for _, line in _lines(url, s3))
    for index, record in enumerate(reader):
        yield record_to_item(kind, dict(record), f"{url} line {reader.line_num}", url, index)


def iter_parquet(kind: JobKind, url: str, s3: S3Options | None) -> Iterator[ItemSpec]:
    """Items from a Parquet manifest, read one record batch at a time."""
    import pyarrow.parquet as pq

    location = parse_url(url)
    handle: Any = location.path if location.scheme == "local" else io.BytesIO(read_url(url, s3))
    try:
        parquet = pq.ParquetFile(handle)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise InvalidSource(f"{url} is not a readable Parquet file: {exc}") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=10_000):
        for record in batch.to_pylist():
            yield record_to_item(kind, record, f"{url} row {index + 1}", url, index)
            index += 1


def iter_source(kind: JobKind, url: str, s3: S3Options | None = None) -> Iterator[ItemSpec]:
    """The items of a source, chosen by what `url` names and the job kind."""
    ext = _ext(url)
    if ext == ".jsonl":
        return iter_jsonl(kind, url, s3)
    if ext == ".csv":
        return iter_csv(kind, url, s3)
    if ext == ".parquet":
        return iter_parquet(kind, url, s3)
    if kind is JobKind.GENERATE:
        if ext in (".txt", ""):
            return iter_prompt_lines(url, s3)
        raise InvalidSource(
            f"prompts come from a .txt file (one per line) or a JSONL / CSV / Parquet manifest, not {url}"
        )
    if kind is JobKind.EDIT:
        raise InvalidSource(
            f"edits come from a JSONL / CSV / Parquet manifest of image and instruction, not {url}"
        )
    location = parse_url(url)
    if location.scheme == "local" and not os.path.isdir(location.path):
        raise InvalidSource(f"{url} is neither a folder of images nor a manifest (.jsonl, .csv, .parquet)")
    return iter_images(url, s3)
