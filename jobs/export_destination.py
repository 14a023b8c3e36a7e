"""Where an export goes: one rule for `--out`, the same for local paths and S3 URLs.

- A destination that ends in `/`, a local path that names an existing folder, or a bare `s3://bucket` is a
  folder: a one-file export is written into it under a default name (`{job_id}.jsonl`, `{job_id}.parquet`; a
  manifest keeps its file name), caption files and per-shard manifests go under it.
- Anything else is a file (an S3 object), and its extension must be the one of the format: a `.csv`
  destination never receives JSON lines.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

from jobs.errors import InvalidExport
from storage import parse_url

#: The file extensions that name a format by themselves, when `--format` is not given.
FORMAT_OF_EXTENSION = {".jsonl": "jsonl", ".parquet": "parquet"}
_FOLDER_HINT = "end --out with / for a folder"


@dataclass(frozen=True)
class Destination:
    """An export destination after the `--out` rule: a folder, or one file."""

    #: `--out` as the user wrote it, for messages.
    given: str
    #: An absolute local path or `s3://bucket[/key]`, without a trailing `/`.
    url: str
    is_folder: bool

    @property
    def suffix(self) -> str:
        """The file's extension, lower case, with its dot ("" when it has none)."""
        return posixpath.splitext(self.url.rpartition("/")[2])[1].lower()

    def join(self, key: str) -> str:
        """The URL of `key` (a relative "/"-separated key) inside this folder."""
        return f"{self.url}/{key}"


def parse_destination(out: str) -> Destination:
    """Apply the `--out` rule to `out` (see the module's docstring)."""
    try:
        location = parse_url(out)
    except ValueError as exc:
        raise InvalidExport(f"--out: {exc}") from None
    slash = out.endswith("/") or out.endswith(os.sep)
    if location.scheme == "s3":
        url = f"s3://{location.bucket}" + (f"/{location.path}" if location.path else "")
        return Destination(out, url, slash or not location.path)
    return Destination(out, location.path, slash or os.path.isdir(location.path))


def file_target(destination: Destination, *, ext: str, default_name: str, what: str) -> str:
    """The URL a one-file export writes: `default_name` in a folder, else the file itself if its extension is
    `ext`; `what` names the export in the refusal."""
    if destination.is_folder:
        return destination.join(default_name)
    if destination.suffix != ext:
        found = f"a {destination.suffix} file" if destination.suffix else "a file without an extension"
        raise InvalidExport(
            f"--out {destination.given} names {found}, but {what} is a {ext} file: name a {ext} file, "
            f"or {_FOLDER_HINT} (the file is then {default_name})"
        )
    return destination.url


def require_folder(destination: Destination, what: str) -> Destination:
    """`destination` if it is a folder; `what` (an export of several files) refuses a file."""
    if not destination.is_folder:
        local = "" if destination.url.startswith("s3://") else " or name an existing folder"
        raise InvalidExport(f"--out {destination.given} names a file, but {what}: {_FOLDER_HINT}{local}")
    return destination


def format_of(out: str | None) -> str:
    """The format `--out` names when `--format` is not given: only a `.jsonl` or `.parquet` file names one."""
    if out is None:
        raise InvalidExport(
            "give --format: txt writes a caption file beside each image; jsonl, parquet and manifest also "
            "need --out"
        )
    destination = parse_destination(out)
    fmt = None if destination.is_folder else FORMAT_OF_EXTENSION.get(destination.suffix)
    if fmt is None:
        raise InvalidExport(
            f"--out {out} does not name a format: give --format (jsonl, parquet, txt or manifest); only a "
            ".jsonl or .parquet file names its own"
        )
    return fmt
