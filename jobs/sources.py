"""Sources of items: image folders and S3 prefixes, prompt files, JSONL / CSV / Parquet manifests and
WebDataset tar shards.

Every source is a generator reading its input as a stream (S3 objects included), so a source of any size
flows into submission in flat memory. Manifests give one item per record (read by jobs.records), with ids
and texts exactly as written (see ManifestReader).
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from jobs.errors import InvalidParameters, InvalidSource, from_storage
from jobs.items import ITEM_PARAMS, ItemSpec
from jobs.lifecycle import JobKind
from jobs.objects import iter_lines
from jobs.params import check_chars
from jobs.records import (
    describe_value,
    iter_records,
    manifest_format,
    open_parquet,
    parquet_batches,
    parquet_records,
)
from jobs.webdataset import is_shard_source, iter_shard, iter_shard_urls
from storage import S3Options, StorageError, open_store, parse_url

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
ID_FIELDS = ("id", "key", "custom_id")
IMAGE_FIELDS = ("image", "image_url", "url", "path", "file")
TEXT_FIELDS: dict[JobKind, tuple[str, ...]] = {
    JobKind.CAPTION: ("prompt", "question"),
    JobKind.GENERATE: ("prompt", "text", "caption"),
    JobKind.EDIT: ("instruction", "prompt", "edit"),
}
#: Fields datasets carry as facts about an image (img2dataset: the original's size; others: a quality score,
#: the file's format). A caption job makes no image: in its manifests these never name output parameters.
IMAGE_FACTS = frozenset({"width", "height", "quality", "image_format"})


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
    """Turns manifest records into items for one job kind; built once per manifest.

    Ids, image references and texts are taken exactly as written: text stays text (never read as a date or
    a number), an integer id becomes its decimal text, anything else in those fields is refused. Fields the
    kind does not read are collected in `ignored`, except the per-item parameters of other kinds, which are
    refused where a record gives them a value.
    """

    def __init__(self, kind: JobKind, manifest_url: str, columns: Columns | None = None) -> None:
        columns = columns or Columns()
        self.kind = kind
        self.id_names = (columns.id,) if columns.id else ID_FIELDS
        self.image_names = (columns.image,) if columns.image else IMAGE_FIELDS
        self.text_names = (columns.text,) if columns.text else TEXT_FIELDS[kind]
        self.param_names = tuple(sorted(ITEM_PARAMS[kind]))
        self.known = frozenset((*self.id_names, *self.image_names, *self.text_names, *self.param_names))
        self.refused = frozenset(_refused_params(kind) - self.known)
        #: Fields met in the manifest that no item takes anything from.
        self.ignored: set[str] = set()
        location = parse_url(manifest_url)
        base = (
            f"s3://{location.bucket}/{posixpath.dirname(location.path)}"
            if location.scheme == "s3"
            else os.path.dirname(location.path)
        )
        self.resolve = _image_resolver(columns.image_root or base)

    def fields(self) -> list[str]:
        """Every field name the reader may look at (Parquet reads only these columns)."""
        return [*self.id_names, *self.image_names, *self.text_names, *self.param_names, *sorted(self.refused)]

    def note_fields(self, names: Iterable[str]) -> None:
        """Note a Parquet manifest's columns: those outside `fields()` are never read, so never seen."""
        self.ignored.update(name for name in names if name not in self.known)

    def key(self, record: dict[str, Any], index: int) -> str:
        """The item id of a record: its id field, else its image reference, else its position."""
        key = self._id(record)
        if key is None:
            key = _pick(record, self.image_names)
        return key if key is not None else f"{index:06d}"

    def item(self, record: dict[str, Any], index: int) -> ItemSpec:
        """The item of one record; InvalidSource (the caller adds where) if the record has none."""
        # Runs once per record of million-item manifests: the usual case (every value a str) stays inline.
        get = record.get
        image = text = params = None
        for name in self.image_names:
            if (value := get(name)) is not None and value != "":
                image = value if type(value) is str else _text(value, name)
                if image:
                    if "\x00" in image or not image.isascii():
                        _check_text(image, name)
                    break
                image = None
        for name in self.text_names:
            if (value := get(name)) is not None and value != "":
                text = value if type(value) is str else _text(value, name)
                if text:
                    if "\x00" in text or not text.isascii():
                        _check_text(text, name)
                    break
                text = None
        for name in self.param_names:
            if (value := get(name)) is not None and value != "":
                params = params or {}
                params[name] = value
        if not record.keys() <= self.known:
            self._other_fields(record)
        if self.kind is JobKind.GENERATE:
            if text is None:
                raise InvalidSource(f"no prompt field (one of {', '.join(self.text_names)}){_has(record)}")
            source = ""
        elif image is None:
            raise InvalidSource(f"no image field (one of {', '.join(self.image_names)}){_has(record)}")
        else:
            source = self.resolve(image)
        key = self._id(record)
        if key is None:
            key = image if image is not None else f"{index:06d}"
        return ItemSpec(key, source, text or "", params)

    def _id(self, record: dict[str, Any]) -> str | None:
        for name in self.id_names:
            value = record.get(name)
            if value is None or value == "":
                continue
            key = value if type(value) is str else _id_text(value, name)
            if key:
                if "\x00" in key or not key.isascii():
                    _check_text(key, name)
                return key
        return None

    def _other_fields(self, record: dict[str, Any]) -> None:
        """Refuse a value in a per-item parameter of another kind; note the other fields as ignored."""
        extra = record.keys() - self.known
        for name in extra & self.refused:
            value = record[name]
            if value is not None and value != "":
                kinds = sorted(k.value for k, names in ITEM_PARAMS.items() if name in names)
                raise InvalidSource(
                    f"field {name!r} is a per-item parameter of {' and '.join(kinds)} jobs, not of "
                    f"{self.kind.value} jobs, which take {', '.join(self.param_names)} per item; "
                    "remove the field or leave it empty"
                )
        self.ignored.update(extra)

    def report_ignored(self, url: str) -> None:
        """Log once which fields of the manifest no item took anything from."""
        if self.ignored:
            log.warning(
                "%s: field(s) %s are not read by %s jobs and were ignored",
                url,
                ", ".join(sorted(self.ignored)),
                self.kind.value,
                extra={"source": url},
            )


def _refused_params(kind: JobKind) -> frozenset[str]:
    """Per-item parameters of other kinds, which a manifest of this kind must not set."""
    others = frozenset().union(*ITEM_PARAMS.values()) - ITEM_PARAMS[kind]
    # Facts about the image to caption (IMAGE_FACTS): a caption job has no output image to parametrise.
    return others - IMAGE_FACTS if kind is JobKind.CAPTION else others


def _pick(record: dict[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = record.get(name)
        if value is not None and value != "":
            text = value if type(value) is str else _text(value, name)
            if text:
                return text
    return None


def _has(record: dict[str, Any]) -> str:
    """What a record holds, for an error saying which field is missing."""
    if not record:
        return "; the record is empty"
    return "; the record has " + ", ".join(repr(name) for name in record)


def _text(value: Any, name: str) -> str:
    """A text field that is not a str: UTF-8 bytes (a Parquet binary column) are decoded, the rest refused."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidSource(
                f"field {name!r} is not valid UTF-8 (byte 0x{value[exc.start]:02x} at byte {exc.start + 1})"
            ) from None
    raise InvalidSource(f"field {name!r} holds {describe_value(value)}; it must be text")


def _id_text(value: Any, name: str) -> str:
    """An id that is not a str: an integer becomes its decimal text; a fraction or a boolean is refused,
    since its text would not be what the user wrote."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, bytes):
        return _text(value, name)
    raise InvalidSource(
        f"field {name!r} holds {describe_value(value)}; an id is text or an integer (write it as a string to "
        "keep it exactly as written)"
    )


#: Characters no id, image reference or text may hold: PostgreSQL cannot store NUL, and a lone surrogate
#: (a JSON escape such as "\ud800" without its pair) cannot be written as UTF-8 anywhere. Other control
#: characters are kept as written: output names percent-encode them (jobs.keys) and every export escapes them.


def _check_text(value: str, name: str) -> None:
    """Refuse a NUL or a lone surrogate in an id, image reference or text, naming the field (the caller adds
    the file and line)."""
    # Callers test `"\x00" in value or not value.isascii()` inline first: most values are neither.
    try:
        check_chars(value, f"field {name!r}")
    except InvalidParameters as exc:
        raise InvalidSource(str(exc)) from None


def iter_manifest(
    kind: JobKind, url: str, s3: S3Options | None, columns: Columns | None = None
) -> Iterator[ItemSpec]:
    """Items of a JSONL, CSV or Parquet manifest, one per record; a bad record stops it with its line or row
    number. Fields no item reads are logged once, when the manifest has been read."""
    reader = ManifestReader(kind, url, columns)
    index = 0
    if manifest_format(url) == "parquet":
        parquet = open_parquet(url, s3)
        reader.note_fields(parquet.schema_arrow.names)
        for batch in parquet_batches(parquet, reader.fields()):
            for record in parquet_records(url, batch, index + 1):
                try:
                    yield reader.item(record, index)
                except InvalidSource as exc:
                    raise InvalidSource(f"{url} row {index + 1}: {exc}") from None
                index += 1
    else:
        for lineno, record in iter_records(url, s3):
            try:
                yield reader.item(record, index)
            except InvalidSource as exc:
                raise InvalidSource(f"{url} line {lineno}: {exc}") from None
            index += 1
    reader.report_ignored(url)


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
    for lineno, line in iter_lines(url, s3):
        if text := line.strip():
            if "\x00" in text:
                raise InvalidSource(f"{url} line {lineno}: holds a NUL character; remove it")
            yield ItemSpec(key=f"{lineno:06d}", text=text)


def iter_source(
    kind: JobKind, url: str, s3: S3Options | None = None, columns: Columns | None = None
) -> Iterator[ItemSpec]:
    """The items of a source, chosen by what `url` names and the job kind; what storage refuses while they are
    read is an InvalidSource (or StorageUnavailable, AccessDenied: jobs.errors.from_storage)."""
    return _refusals_mapped(_items_of(kind, url, s3, columns))


def _refusals_mapped(items: Iterator[ItemSpec]) -> Iterator[ItemSpec]:
    try:
        yield from items
    except StorageError as exc:  # a listing, a shard or a Parquet file read by ranges
        raise from_storage(exc, role="source") from exc


def _items_of(kind: JobKind, url: str, s3: S3Options | None, columns: Columns | None) -> Iterator[ItemSpec]:
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
