"""Sources of items: image folders and S3 prefixes, prompt files, JSONL / CSV / Parquet manifests and
WebDataset tar shards.

Every source is a generator reading its input as a stream (S3 objects included), so a source of any size
flows into submission in flat memory. Items keep the id the manifest gives them.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from jobs.errors import InvalidSource
from jobs.lifecycle import JobKind
from jobs.objects import iter_lines, open_seekable, open_stream
from jobs.submit import ITEM_PARAMS, ItemSpec
from jobs.webdataset import is_shard_source, iter_shard, iter_shard_urls
from storage import S3Options, open_store, parse_url

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MANIFEST_EXTENSIONS = (".jsonl", ".jsonl.gz", ".csv", ".csv.gz", ".parquet")
ID_FIELDS = ("id", "key", "custom_id")
IMAGE_FIELDS = ("image", "image_url", "url", "path", "file")
TEXT_FIELDS: dict[JobKind, tuple[str, ...]] = {
    JobKind.CAPTION: ("prompt", "question"),
    JobKind.GENERATE: ("prompt", "text", "caption"),
    JobKind.EDIT: ("instruction", "prompt", "edit"),
}
#: Parquet rows decoded at a time.
PARQUET_BATCH = 10_000


@dataclass(frozen=True)
class Columns:
    """Which manifest fields hold what; None takes the first present of the usual names."""

    id: str | None = None
    image: str | None = None
    #: Caption question, generation prompt or edit instruction.
    text: str | None = None
    #: Folder or s3:// prefix that relative image references start from (default: the manifest's folder).
    image_root: str | None = None


def _ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def manifest_format(url: str) -> str | None:
    """The format of a manifest URL: jsonl, csv or parquet (the text formats may be gzipped), else None."""
    name = url.lower()
    for ext in MANIFEST_EXTENSIONS:
        if name.endswith(ext):
            return ext.split(".")[1]
    return None


# -- manifests ---------------------------------------------------------------------------------------------
def _image_resolver(base: str) -> Callable[[str], str]:
    """A function making an image reference absolute: URLs and absolute paths stay, the rest joins `base`."""
    location = parse_url(base)
    if location.scheme == "s3":
        prefix = f"s3://{location.bucket}/" + (location.path + "/" if location.path else "")

        def resolve_s3(ref: str) -> str:
            if "://" in ref:
                return ref
            return prefix + ref.lstrip("/")

        return resolve_s3
    folder = location.path

    def resolve_local(ref: str) -> str:
        if "://" in ref or ref.startswith("/"):
            return ref
        path = f"{folder}/{ref}"
        # normpath only where needed: it is a good part of the cost of a million-item manifest.
        return os.path.normpath(path) if "/." in path or "//" in path else path

    return resolve_local


class ManifestReader:
    """Turns manifest records into items for one job kind; built once per manifest."""

    def __init__(self, kind: JobKind, manifest_url: str, columns: Columns | None = None) -> None:
        columns = columns or Columns()
        self.kind = kind
        self.id_names = (columns.id,) if columns.id else ID_FIELDS
        self.image_names = (columns.image,) if columns.image else IMAGE_FIELDS
        self.text_names = (columns.text,) if columns.text else TEXT_FIELDS[kind]
        self.param_names = tuple(sorted(ITEM_PARAMS[kind]))
        location = parse_url(manifest_url)
        base = (
            f"s3://{location.bucket}/{posixpath.dirname(location.path)}"
            if location.scheme == "s3"
            else os.path.dirname(location.path)
        )
        self.resolve = _image_resolver(columns.image_root or base)

    def fields(self) -> list[str]:
        """Every field name the reader may look at (Parquet reads only these columns)."""
        return [*self.id_names, *self.image_names, *self.text_names, *self.param_names]

    def key(self, record: dict[str, Any], index: int) -> str:
        """The item id of a record: its id field, else its image reference, else its position."""
        key = _first(record, self.id_names)
        if key is None:
            key = _first(record, self.image_names)
        return str(key) if key is not None else f"{index:06d}"

    def item(self, record: dict[str, Any], index: int) -> ItemSpec:
        """The item of one record; InvalidSource (the caller adds where) if the record has none."""
        # Runs once per record of million-item manifests: lookups are inlined rather than calls to _first.
        get = record.get
        image = text = key = params = None
        for name in self.image_names:
            if (value := get(name)) is not None and value != "":
                image = value
                break
        for name in self.text_names:
            if (value := get(name)) is not None and value != "":
                text = str(value)
                break
        for name in self.id_names:
            if (value := get(name)) is not None and value != "":
                key = str(value)
                break
        for name in self.param_names:
            if (value := get(name)) is not None and value != "":
                params = params or {}
                params[name] = value
        if self.kind is JobKind.GENERATE:
            if text is None:
                raise InvalidSource(f"no prompt field (one of {', '.join(self.text_names)})")
            source = ""
        elif image is None:
            raise InvalidSource(f"no image field (one of {', '.join(self.image_names)})")
        else:
            source = self.resolve(str(image))
        if key is None:
            key = str(image) if image is not None else f"{index:06d}"
        return ItemSpec(key, source, text or "", params)


def _first(record: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = record.get(name)
        if value is not None and value != "":
            return value
    return None


def _text_lines(url: str, s3: S3Options | None) -> Iterator[tuple[int, str]]:
    if not url.lower().endswith(".gz"):
        yield from iter_lines(url, s3)
        return
    with open_stream(url, s3) as raw, gzip.open(raw, "rt", encoding="utf-8", newline="") as text:
        try:
            yield from enumerate(text, start=1)
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise InvalidSource(f"{url} is not gzip-compressed UTF-8 text: {exc}") from None


def iter_records(
    url: str, s3: S3Options | None, *, exact: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, or 0 where unknown; record) of a JSONL or CSV manifest, streamed.

    `exact` reads JSON lines with the json module only: every record exactly as written (pyarrow, faster,
    gives every record the fields of the first ones).
    """
    fmt = manifest_format(url)
    if fmt == "jsonl" and exact:
        yield from _python_jsonl(url, s3, skip=0)
    elif fmt == "jsonl":
        from pyarrow import ArrowInvalid

        read = 0
        try:
            for record in _arrow_jsonl(url, s3):
                yield 0, record
                read += 1
            return
        except ArrowInvalid:
            pass  # a malformed line or a field changing type: the exact parser goes on where arrow stopped
        yield from _python_jsonl(url, s3, skip=read)
    elif fmt == "csv":
        reader = csv.DictReader(line for _, line in _text_lines(url, s3))
        try:
            for row in reader:
                yield reader.line_num, row
        except csv.Error as exc:
            raise InvalidSource(f"{url} line {reader.line_num}: {exc}") from None
    else:
        raise InvalidSource(f"{url} is not a JSONL or CSV manifest")


def _arrow_jsonl(url: str, s3: S3Options | None) -> Iterator[dict[str, Any]]:
    # pyarrow parses JSON lines in C, several times faster than json.loads per line: this is most of the
    # cost of submitting a million-item manifest.
    import pyarrow.json as pj

    with open_stream(url, s3) as raw:
        stream: IO[bytes] | gzip.GzipFile = gzip.GzipFile(fileobj=raw) if url.lower().endswith(".gz") else raw
        for batch in pj.open_json(stream, read_options=pj.ReadOptions(use_threads=False)):
            yield from batch.to_pylist()


def _python_jsonl(url: str, s3: S3Options | None, skip: int) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in _text_lines(url, s3):
        if not line.strip():
            continue
        if skip:
            skip -= 1
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidSource(f"{url} line {lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise InvalidSource(f"{url} line {lineno}: expected a JSON object")
        yield lineno, record


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
    parquet = open_parquet(url, s3)
    names = parquet.schema_arrow.names
    columns = None if wanted is None else [name for name in dict.fromkeys(wanted) if name in names]
    yield from parquet.iter_batches(batch_size=PARQUET_BATCH, columns=columns)


def iter_manifest(
    kind: JobKind, url: str, s3: S3Options | None, columns: Columns | None = None
) -> Iterator[ItemSpec]:
    """Items of a JSONL, CSV or Parquet manifest; a bad record stops it with its line or row number."""
    reader = ManifestReader(kind, url, columns)
    index = 0
    if manifest_format(url) == "parquet":
        for batch in iter_parquet_batches(url, s3, reader.fields()):
            for record in batch.to_pylist():
                try:
                    yield reader.item(record, index)
                except InvalidSource as exc:
                    raise InvalidSource(f"{url} row {index + 1}: {exc}") from None
                index += 1
        return
    for lineno, record in iter_records(url, s3):
        try:
            yield reader.item(record, index)
        except InvalidSource as exc:
            # The fast JSONL reader does not count lines: find this record's line again, exactly (errors are
            # rare, a second read of the manifest up to here is cheap next to a user hunting for the line).
            lineno = lineno or _line_of_record(url, s3, index)
            raise InvalidSource(f"{url} line {lineno}: {exc}") from None
        index += 1


def _line_of_record(url: str, s3: S3Options | None, index: int) -> int:
    """The line number of the record at `index` (0-based) of a JSONL manifest."""
    for position, (lineno, _) in enumerate(_python_jsonl(url, s3, skip=0)):
        if position == index:
            return lineno
    return 0


# -- folders, prefixes, prompt files, shards ---------------------------------------------------------------
def iter_images(url: str, s3: S3Options | None) -> Iterator[ItemSpec]:
    """Images under a folder or S3 prefix, recursively, by extension; the id is the relative path.

    Tar shards met in the listing are opened and their samples become items too (WebDataset layout).
    """
    store = open_store(url, s3)
    for key in store.iter_keys():
        ext = _ext(key)
        if ext in IMAGE_EXTENSIONS:
            yield ItemSpec(key=key, source=store.url_for(key))
        elif ext == ".tar":
            yield from iter_webdataset(store.url_for(key), s3)


def iter_webdataset(url: str, s3: S3Options | None) -> Iterator[ItemSpec]:
    """One item per image sample of WebDataset shards; the id is the sample key (img2dataset's `key`)."""
    for shard in iter_shard_urls(url, s3):
        for key, member in iter_shard(shard, s3):
            yield ItemSpec(key=key, source=member.url)


def iter_prompt_lines(url: str, s3: S3Options | None) -> Iterator[ItemSpec]:
    """One prompt per non-empty line of a text file; the id is the line number."""
    for lineno, line in _text_lines(url, s3):
        if line.strip():
            yield ItemSpec(key=f"{lineno:06d}", text=line.strip())


def iter_source(
    kind: JobKind, url: str, s3: S3Options | None = None, columns: Columns | None = None
) -> Iterator[ItemSpec]:
    """The items of a source, chosen by what `url` names and the job kind."""
    if manifest_format(url):
        return iter_manifest(kind, url, s3, columns)
    if is_shard_source(url):
        if kind is not JobKind.CAPTION:
            raise InvalidSource(
                f"tar shards are a source of images to caption; {kind.value} jobs need a manifest"
            )
        return iter_webdataset(url, s3)
    if kind is JobKind.GENERATE:
        if _ext(url) in (".txt", ""):
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
        raise InvalidSource(
            f"{url} is neither a folder of images nor a manifest (.jsonl, .csv, .parquet) nor tar shards"
        )
    return iter_images(url, s3)
