"""Caption files, one per image: `photo.jpg` -> `photo.txt`, what dataset-training tools read beside an image.

Written beside the inputs (local folders or S3 prefixes), or under a folder (`--out DIR/`) by item id, the
tree of ids kept: `sub/photo.jpg` -> `DIR/sub/photo.txt` (tar shard members have no place beside them).

What holds whatever the ids and inputs:
- Each exported item gets a file of its own, and no caption file is an input of the job: when two items
  would share one (`a.jpg` and `a.png` -> `a.txt`) or a caption file would be an input (an image named
  `notes.txt`), the export is refused before anything is written, naming them.
- Under a folder every file stays inside it: id segments that are empty, `.` or `..` are written `%`, `%2E`
  and `%2E%2E`, and a `%` of an id as `%25`, so distinct ids never share a path.
- Local files are written whole to a temporary file renamed over the caption file: an existing caption file
  is replaced, never written through (a link is replaced, not followed).
"""

from __future__ import annotations

import os
import posixpath
import secrets
from array import array
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from sqlalchemy import select

from jobs.db import session_scope
from jobs.errors import InvalidExport, InvalidParameters
from jobs.export_destination import Destination, require_folder
from jobs.export_options import ROWS_PER_FETCH, ExportReport
from jobs.lifecycle import ItemStatus, JobKind
from jobs.models import Item, Job
from jobs.settings import Settings
from jobs.webdataset import parse_member_url
from storage import S3Options, Store, open_store, parse_url

#: Uploads in flight at once when the captions go to S3.
UPLOADS = 16
CAPTION_EXT = ".txt"
#: Collisions named in a refusal; the rest are counted.
SHOWN = 3
# Id segments that would leave the folder or vanish from a path, and how they are written.
_SEGMENTS = {"": "%", ".": "%2E", "..": "%2E%2E"}


def relative_key(item_id: str) -> str:
    """An item id as a relative "/"-separated path that stays inside its folder; distinct ids give distinct
    paths (only `%` and empty, `.` and `..` segments are rewritten)."""
    return "/".join(_SEGMENTS.get(part, part.replace("%", "%25")) for part in item_id.split("/"))


def caption_name(path: str) -> str:
    """The caption file of an image path or URL: its last extension replaced by `.txt` (added if none)."""
    return posixpath.splitext(path)[0] + CAPTION_EXT


def caption_target(item_id: str, source: str, folder: Destination | None) -> str:
    """Where the caption of an item goes: beside its input (`folder` None), or under `folder` by item id."""
    if folder is not None:
        return folder.join(caption_name(relative_key(item_id)))
    if parse_member_url(source) is not None:
        raise InvalidExport(
            f"item {item_id!r} is an image inside a tar shard, which has no place beside it for a caption "
            "file: give a folder with --out (ending in /)"
        )
    return caption_name(_normal(source))


def write_caption_files(
    settings: Settings, job: Job, folder: Destination | None, statuses: tuple[str, ...] = ()
) -> ExportReport:
    """Write a `.txt` caption file for every succeeded item of a caption job; report the files written.

    Items that succeed while the export runs, after its check, are left for the next export."""
    if job.kind != JobKind.CAPTION.value:
        raise InvalidParameters(f"caption files are for caption jobs; job {job.id} is a {job.kind} job")
    if statuses and statuses != (ItemStatus.SUCCEEDED.value,):
        raise InvalidParameters("caption files exist for succeeded items only")
    if folder is not None:
        require_folder(folder, "caption files are one per item")
    checked = _check_files(settings, job, folder)
    items = Item.__table__.c
    query = (
        select(items.seq, items.key, items.source, items.output)
        .where(items.job_id == job.id, items.status == ItemStatus.SUCCEEDED.value)
        .order_by(items.seq)
    )
    writer = _Writer(settings.s3_options())
    count = 0
    try:
        with session_scope(settings.resolved_database_url) as session:
            connection = session.connection().execution_options(yield_per=ROWS_PER_FETCH)
            for seq, key, source, output in connection.execute(query):
                target = caption_target(key, source, folder)
                if checked.holds(seq, target):
                    writer.write(target, output or "")
                    count += 1
    finally:
        writer.close()
    return ExportReport(count, "caption file", None if folder is None else folder.url, count)


# -- one file per item, no input written -------------------------------------------------------------------
class _Checked:
    """The caption files an export checked, as (hash of the path, item seq) pairs sorted by hash."""

    def __init__(self, hashes: np.ndarray, seqs: np.ndarray) -> None:
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.seqs = seqs[order]

    def holds(self, seq: int, target: str) -> bool:
        """Whether the item `seq` was checked with this caption file."""
        key = hash(target)
        first = int(np.searchsorted(self.hashes, key))
        last = int(np.searchsorted(self.hashes, key, side="right"))
        return seq in self.seqs[first:last].tolist()


def _check_files(settings: Settings, job: Job, folder: Destination | None) -> _Checked:
    """Refuse the export if a caption file would serve two items, be an input, or be a folder of others.

    The first pass keeps a hash of each caption file and its item's seq (16 bytes an item, so millions of
    items fit); only when hashes meet does a second pass find the paths, which the refusal names.
    """
    targets, seqs = array("q"), array("q")
    taken: set[int] = set()  # hashes of inputs and folders a caption file cannot replace
    for seq, key, source, succeeded in _items(settings, job):
        for path in _occupied(source):
            taken.add(hash(path))
        if succeeded:
            target = caption_target(key, source, folder)
            targets.append(hash(target))
            seqs.append(seq)
            taken.update(hash(path) for path in _txt_folders(target))
    checked = _Checked(np.frombuffer(targets, np.int64), np.frombuffer(seqs, np.int64))
    hashes = checked.hashes
    suspects = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    if taken:
        suspects.update(hashes[np.isin(hashes, np.fromiter(taken, np.int64, len(taken)))].tolist())
    if suspects:
        _refuse(settings, job, folder, suspects)
    return checked


def _refuse(settings: Settings, job: Job, folder: Destination | None, suspects: set[int]) -> None:
    users: dict[str, list[str]] = {}
    taken: set[str] = set()
    for _, key, source, succeeded in _items(settings, job):
        taken.update(path for path in _occupied(source) if hash(path) in suspects)
        if succeeded:
            target = caption_target(key, source, folder)
            if hash(target) in suspects:
                users.setdefault(target, []).append(key)
            taken.update(path for path in _txt_folders(target) if hash(path) in suspects)
    shared = [(target, keys) for target, keys in users.items() if len(keys) > 1 or target in taken]
    if not shared:
        return  # hashes met by chance
    named = "; ".join(_collision(target, keys, target in taken) for target, keys in shared[:SHOWN])
    more = f" (and {len(shared) - SHOWN} more)" if len(shared) > SHOWN else ""
    raise InvalidExport(
        f"no caption file was written: {named}{more}. A caption file is its image's name with {CAPTION_EXT} "
        "for its extension (what training tools read), one per image and never an input: rename those "
        "images, or export --format jsonl"
    )


def _collision(target: str, keys: list[str], taken: bool) -> str:
    if taken:
        return f"{target}, the caption file of item {keys[0]!r}, is an input of the job or a folder"
    return f"items {', '.join(repr(key) for key in keys)} would share {target}"


def _items(settings: Settings, job: Job) -> Iterator[tuple[int, str, str, bool]]:
    """(seq, id, input, succeeded) of every item of the job, streamed; the job's source is an input too."""
    if job.source:
        yield -1, "", job.source, False
    items = Item.__table__.c
    query = select(items.seq, items.key, items.source, items.status).where(items.job_id == job.id)
    succeeded = ItemStatus.SUCCEEDED.value
    with session_scope(settings.resolved_database_url) as session:
        connection = session.connection().execution_options(yield_per=ROWS_PER_FETCH)
        for seq, key, source, status in connection.execute(query):
            yield seq, key, source, status == succeeded


def _occupied(source: str) -> list[str]:
    """The paths an input holds that a caption file could land on: itself and its folders named `*.txt`."""
    if CAPTION_EXT not in source or parse_member_url(source) is not None:
        return []
    path = _normal(source)
    found = list(_txt_folders(path))
    if path.endswith(CAPTION_EXT):
        found.append(path)
    return found


def _txt_folders(path: str) -> Iterator[str]:
    """The folders on `path` whose name ends in `.txt`, where no caption file can be written."""
    if CAPTION_EXT + "/" not in path:
        return
    parts = path.split("/")
    for end in range(1, len(parts)):
        if parts[end - 1].endswith(CAPTION_EXT):
            yield "/".join(parts[:end])


def _normal(source: str) -> str:
    # Local inputs are compared as normalized paths, the way the worker reads them.
    if "://" in source:
        return source
    return os.path.normpath(source) if "/." in source or "//" in source else source


# -- writing -----------------------------------------------------------------------------------------------
class _Writer:
    """Writes small text files: local files directly, S3 objects on a bounded pool of upload threads."""

    def __init__(self, s3: S3Options) -> None:
        self.s3 = s3
        self.stores: dict[str, Store] = {}
        self.pool = ThreadPoolExecutor(UPLOADS, thread_name_prefix="ovis-captions")
        self.pending: deque[Future[str]] = deque()
        self.folder = ""

    def write(self, url: str, text: str) -> None:
        location = parse_url(url)
        if location.scheme == "local":
            self._write_local(location.path, text)
            return
        store = self.stores.get(location.bucket)
        if store is None:
            store = self.stores[location.bucket] = open_store(f"s3://{location.bucket}", self.s3)
        if len(self.pending) >= 4 * UPLOADS:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(store.write, location.path, text.encode(), "text/plain"))

    def _write_local(self, path: str, text: str) -> None:
        folder, name = os.path.split(path)
        # No fsync: a caption file is cheap to write again, an fsync per file is not.
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.ovis-tmp")
        try:
            if folder != self.folder:
                os.makedirs(folder, exist_ok=True)
                self.folder = folder
            with open(tmp, "x", encoding="utf-8") as out:
                out.write(text)
            os.replace(tmp, path)
        except OSError as exc:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise InvalidExport(f"cannot write the caption file {path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(cancel_futures=True)
