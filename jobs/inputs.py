"""Where item inputs may come from, and how a worker reads one: a plain object or a WebDataset tar member.

Submission checks millions of inputs, so `InputRoots.allows` resolves the real path of each folder once and
compares the rest as strings. The worker checks every input again with `input_allowed` (real paths, symlinks
followed) right before reading it: that is the check that guards the files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from jobs.errors import InputNotAllowed
from jobs.webdataset import parse_member_url, read_member
from storage import S3Options, is_within, read_url
from storage.local import read_regular_file

#: Folders remembered by one InputRoots; past this the memo starts again (flat memory on huge sources).
_MEMO_LIMIT = 65_536
#: How long a worker trusts a folder's resolved real path (a folder swapped for a symlink is seen after this).
_WORKER_MEMO_S = 60.0
_worker_folders: dict[tuple[str, tuple[str, ...]], tuple[bool, float]] = {}


class InputRoots:
    """The allowed input roots, with a per-folder memo for checking many inputs fast."""

    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = list(roots)
        self._folders: dict[str, bool] = {}

    def allows(self, url: str) -> bool:
        """True if `url` (a path, s3:// URL or tar member of either) lies inside an allowed root."""
        member = parse_member_url(url)
        if member is not None:
            url = member.shard
        if url.startswith("s3://"):
            folder, _, name = url.rpartition("/")
        elif "://" in url:
            return is_within(url, self.roots)  # file:// and anything is_within refuses
        elif url.startswith("/") and "/." not in url and "//" not in url:
            folder, _, name = url.rpartition("/")  # already absolute and normal: no need to normalise
        else:
            folder, name = os.path.split(os.path.normpath(os.path.abspath(url)))
        if name in ("", ".", ".."):
            return is_within(url, self.roots)
        allowed = self._folders.get(folder)
        if allowed is None:
            if len(self._folders) >= _MEMO_LIMIT:
                self._folders.clear()
            allowed = self._folders[folder] = is_within(folder or "/", self.roots)
        # A root may name one object rather than a folder: only then does the folder test say no wrongly.
        return allowed or is_within(url, self.roots)


def _plain_local_path(url: str) -> str | None:
    """`url` when it names a local file by an absolute, normal path (no tar member, no "." or ".." parts)."""
    if "://" in url or "#" in url or not url.startswith("/") or "/." in url or "//" in url:
        return None
    return None if url.endswith("/") else url


def _folder_allowed(folder: str, roots: Sequence[str]) -> bool:
    """Whether the real path of a local folder lies inside a root, remembered for _WORKER_MEMO_S."""
    key = (folder, tuple(roots))
    now = time.monotonic()
    cached = _worker_folders.get(key)
    if cached is None or now - cached[1] > _WORKER_MEMO_S:
        if len(_worker_folders) >= _MEMO_LIMIT:
            _worker_folders.clear()
        cached = _worker_folders[key] = (is_within(folder or "/", roots), now)
    return cached[0]


def input_allowed(url: str, roots: Sequence[str]) -> bool:
    """The worker's check before reading: real paths, for plain objects and tar members alike.

    A local file is allowed when the real path of its folder lies inside a root (remembered for a minute)
    and the file itself is no symlink; any other case takes the full `is_within` test. That is exact, and a
    stat instead of resolving every component of every path.
    """
    member = parse_member_url(url)
    target = member.shard if member is not None else url
    path = _plain_local_path(target)
    if path is None or not _folder_allowed(path.rpartition("/")[0], roots) or os.path.islink(path):
        return is_within(target, roots)
    return True


def read_allowed_input(url: str, roots: Sequence[str], s3: S3Options | None) -> bytes:
    """What a worker does with an item's input: `input_allowed`, then `read_input`; raises InputNotAllowed.

    A plain local file in a folder known to be allowed is opened without following a symlink, which is the
    check and the open in one system call; a symlink, and everything else, takes the two steps.
    """
    path = _plain_local_path(url)
    if path is not None and _folder_allowed(path.rpartition("/")[0], roots):
        data = read_regular_file(path)
        if data is not None:
            return data
    if not input_allowed(url, roots):
        raise InputNotAllowed(f"{url} is outside the allowed input roots")
    return read_input(url, s3)


def read_input(url: str, s3: S3Options | None) -> bytes:
    """The bytes of an item's input; raises the storage package's errors (ObjectNotFound, ...)."""
    member = parse_member_url(url)
    if member is not None:
        return read_member(member, s3)
    return read_url(url, s3)
