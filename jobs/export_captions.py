"""Caption files beside each image, `photo.jpg` -> `photo.txt`: the convention dataset-training tools read.

Written beside the inputs (local folders or S3 prefixes), or under `--out` by item id when the images have
no place of their own (members of tar shards) or should stay untouched.
"""

from __future__ import annotations

import os
import posixpath
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from jobs.errors import InvalidParameters
from jobs.export import iter_rows, load_job
from jobs.lifecycle import ItemStatus, JobKind
from jobs.settings import Settings
from jobs.webdataset import parse_member_url
from storage import S3Options, Store, open_store, parse_url

#: Uploads in flight at once when the captions go to S3.
UPLOADS = 16


def caption_path(item_id: str, source: str, out: str | None) -> str:
    """Where the caption of an item goes: beside its image, or under `out` by item id."""
    if out is None:
        if parse_member_url(source) is not None:
            raise InvalidParameters(
                "images inside tar shards have no place beside them: give a folder or prefix with --out"
            )
        return os.path.splitext(source)[0] + ".txt" if "://" not in source else _swap_ext(source)
    key = "/".join(part for part in item_id.split("/") if part not in ("", ".", ".."))
    return f"{out.rstrip('/')}/{_swap_ext(key or 'item')}"


def _swap_ext(path: str) -> str:
    stem, ext = posixpath.splitext(path)
    return (stem if ext and "/" not in ext else path) + ".txt"


class _Writer:
    """Writes small text objects: local files directly, S3 objects on a bounded pool of upload threads."""

    def __init__(self, s3: S3Options) -> None:
        self.s3 = s3
        self.stores: dict[str, Store] = {}
        self.pool = ThreadPoolExecutor(UPLOADS, thread_name_prefix="ovis-captions")
        self.pending: deque[Future[str]] = deque()

    def write(self, url: str, text: str) -> None:
        location = parse_url(url)
        if location.scheme == "local":
            # A plain write: a caption file is cheap to write again, an fsync per file is not cheap.
            os.makedirs(os.path.dirname(location.path), exist_ok=True)
            with open(location.path, "w", encoding="utf-8") as out:
                out.write(text)
            return
        store = self.stores.get(location.bucket)
        if store is None:
            store = self.stores[location.bucket] = open_store(f"s3://{location.bucket}", self.s3)
        if len(self.pending) >= 4 * UPLOADS:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(store.write, location.path, text.encode(), "text/plain"))

    def close(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(cancel_futures=True)


def write_caption_files(
    settings: Settings, job_id: str, out: str | None, statuses: tuple[str, ...] = ()
) -> int:
    """Write a `.txt` caption file for every succeeded item of a caption job; return how many."""
    job = load_job(settings, job_id)
    if job.kind != JobKind.CAPTION.value:
        raise InvalidParameters(f"caption files are for caption jobs; job {job_id} is a {job.kind} job")
    if statuses and statuses != (ItemStatus.SUCCEEDED.value,):
        raise InvalidParameters("caption files exist for succeeded items only")
    writer = _Writer(settings.s3_options())
    count = 0
    try:
        for row in iter_rows(settings, job_id, (ItemStatus.SUCCEEDED.value,)):
            writer.write(caption_path(row["id"], row["input"], out), row["output"] or "")
            count += 1
    finally:
        writer.close()
    return count
