"""Where item inputs may come from, and how a worker reads one: a plain object or a WebDataset tar member.

Submission checks millions of inputs, so `InputRoots.allows` resolves the real path of each folder once and
compares the rest as strings: a first filter that refuses a bad manifest early. What guards the files is the
worker's read, `read_allowed_input`: it pins the local file (or shard) first, then compares where the pinned
file really lies with the roots' real paths, on every read with nothing remembered in between, and reads only
what it checked. Sizes are checked before any byte is read, and only regular files are read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from jobs.errors import ImageTooLarge, InputMissing, InputNotAllowed
from jobs.webdataset import check_member_range, parse_member_url, read_local_member, read_s3_member
from storage import LocalFile, S3Options, S3Store, StorageError, is_within, parse_url

#: Folders remembered by one InputRoots; past this the memo starts again (flat memory on huge sources).
_MEMO_LIMIT = 65_536


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


def input_allowed(url: str, roots: Sequence[str]) -> bool:
    """Whether `url` (a tar member by its shard) lies inside a root by real paths as they are now."""
    member = parse_member_url(url)
    return is_within(member.shard if member is not None else url, roots)


def read_allowed_input(
    url: str, roots: Sequence[str], s3: S3Options | None, max_bytes: int | None = None
) -> bytes:
    """What a worker does with an item's input: read it if it lies inside `roots` and has at most
    `max_bytes` bytes, both checked before any byte is read.

    Raises InputNotAllowed, ImageTooLarge, InputMissing (a special file, a member its shard does not hold)
    and the storage package's errors (ObjectNotFound, StorageUnavailable, ...), which the caller turns into
    this project's with `jobs.errors.from_storage(exc, role="input", url=url)`.
    """
    return _read(url, roots, s3, max_bytes)


def read_input(url: str, s3: S3Options | None) -> bytes:
    """The bytes of an item's input wherever it lies, with no size limit (a worker reads with
    `read_allowed_input`); raises the storage package's errors (ObjectNotFound, ...)."""
    return _read(url, None, s3, None)


def _read(url: str, roots: Sequence[str] | None, s3: S3Options | None, max_bytes: int | None) -> bytes:
    member = parse_member_url(url)
    target = member.shard if member is not None else url
    try:
        location = parse_url(target)
    except ValueError:
        raise InputNotAllowed(f"{url} is outside the allowed input roots") from None
    if location.scheme == "local":
        with _open_local(url, location.path, roots) as file:
            if file.kind is not None:
                what = "a shard" if member is not None else "an input"
                raise InputMissing(f"{target} is {file.kind}, not a file: {what} must be a regular file")
            if member is None:
                _check_size(url, file.size, max_bytes)
                return file.read()
            check_member_range(member, max_bytes)
            return read_local_member(file, member)
    if roots is not None and not is_within(target, roots):
        raise InputNotAllowed(f"{url} is outside the allowed input roots")
    if member is not None:
        check_member_range(member, max_bytes)
        return read_s3_member(member, s3)
    return _read_s3_object(url, location.bucket, location.path, s3, max_bytes)


def _open_local(url: str, path: str, roots: Sequence[str] | None) -> LocalFile:
    """Pin a local file and check where it really lies; what is missing is only said for paths inside."""
    real_roots = None if roots is None else _real_local_roots(roots)
    try:
        file = LocalFile(path)
    except StorageError:
        if roots is not None and not is_within(path, roots):
            raise InputNotAllowed(f"{url} is outside the allowed input roots") from None
        raise
    if real_roots is not None and not any(_under(file.real_path, root) for root in real_roots):
        file.close()
        raise InputNotAllowed(f"{url} is outside the allowed input roots")
    return file


def _real_local_roots(roots: Sequence[str]) -> list[str]:
    """The real paths of the local roots, resolved for each read: a root is trusted, not remembered."""
    locations = [parse_url(root) for root in roots]
    return [os.path.realpath(location.path) for location in locations if location.scheme == "local"]


def _under(real_path: str, root: str) -> bool:
    # The real path of the pinned file is compared as it is: resolving it again would look at the paths now,
    # not at the file that was pinned.
    root = root.rstrip("/")
    return real_path == root or real_path.startswith(root + "/")


def _read_s3_object(url: str, bucket: str, key: str, s3: S3Options | None, max_bytes: int | None) -> bytes:
    if not key:
        raise InputMissing(f"{url} names a bucket, not an object")
    try:
        store = S3Store(bucket, "", s3)
        answer = store.get(key)
    except ValueError as exc:  # a key S3 could take but a store refuses (empty segments)
        raise InputMissing(f"{url} cannot be read: {exc}") from None
    with answer:
        _check_size(url, answer.size, max_bytes)
        return answer.read()


def _check_size(url: str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise ImageTooLarge(f"{url} has {size} bytes; the limit is {max_bytes} (OVIS_BATCH_MAX_IMAGE_BYTES)")
