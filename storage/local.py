"""A store in a local directory: the embedded default, for the quick start and tests."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from typing import BinaryIO

from storage.base import DEFAULT_CONTENT_TYPE, Store, check_key, check_prefix
from storage.errors import AccessDenied, ObjectNotFound, StorageError

# Writes go to a hidden temporary file next to the target and are renamed over it; listings skip these so
# a reader never sees a half-written object.
_TMP_PREFIX = "."
_TMP_SUFFIX = ".ovis-tmp"
#: Bytes asked for per read of a local file.
_READ_SIZE = 64 * 1024


class LocalStore(Store):
    """Objects as files under one directory; keys map to relative paths. The directory is made on first write.

    Symlinks to files are followed; symlinked directories are not listed (they could loop). Confining
    inputs that may be symlinks is the job of ``is_within``, which compares real paths.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.url = self.root

    def path_for(self, key: str) -> str:
        """Return the absolute file path of ``key``."""
        return os.path.join(self.root, *check_key(key).split("/"))

    def url_for(self, key: str) -> str:
        """Return the absolute file path of ``key`` (a local store's URLs are plain paths)."""
        return self.path_for(key)

    def read(self, key: str) -> bytes:
        """Return the file's bytes; ObjectNotFound if it does not exist."""
        return read_file(self.path_for(key))

    def write(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        """Write ``data`` atomically (temporary file + rename); ``content_type`` is not kept locally."""
        path = self.path_for(key)
        _replace_atomically(path, lambda out: out.write(data))
        return path

    def upload_file(
        self, key: str, path: str | os.PathLike[str], content_type: str = DEFAULT_CONTENT_TYPE
    ) -> str:
        """Copy the file at ``path`` into the store atomically."""
        target = self.path_for(key)
        source = os.fspath(path)
        try:
            with open(source, "rb") as src:
                _replace_atomically(target, lambda out: shutil.copyfileobj(src, out, 1024 * 1024))
        except OSError as exc:
            raise _wrap_os_error(exc, source) from exc
        return target

    def exists(self, key: str) -> bool:
        """Return whether a regular file is stored under ``key``."""
        return os.path.isfile(self.path_for(key))

    def check_writable(self) -> None:
        """The directory exists or can be made, and is writable."""
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise _wrap_os_error(exc, self.root) from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise AccessDenied(f"permission denied: cannot write in {self.root}", url=self.root)

    def delete(self, key: str) -> None:
        """Remove the file under ``key``; a missing file is not an error."""
        path = self.path_for(key)
        try:
            os.remove(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return  # no object under this key (a directory is not one)
        except OSError as exc:
            raise _wrap_os_error(exc, path) from exc

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        """Yield keys starting with ``prefix``, depth first, in the order S3 would list them."""
        check_prefix(prefix)
        # Start at the deepest directory the prefix names instead of walking the whole tree.
        start = prefix.rpartition("/")[0]
        base = start + "/" if start else ""
        top = os.path.join(self.root, *start.split("/")) if start else self.root
        yield from _walk(top, base, prefix)


def read_file(path: str, *, flags: int = 0) -> bytes:
    """Read one local file (os.open `flags` added), wrapping OSError into the package's errors."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
        try:
            return _read_to_end(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _wrap_os_error(exc, path) from exc


def read_regular_file(path: str) -> bytes | None:
    """Read one local file whose last path component is no symlink; None when it is one (the caller decides
    whether to follow it). The test and the open are one system call, with nothing in between to swap."""
    try:
        return read_file(path, flags=os.O_NOFOLLOW)
    except StorageError as exc:
        if isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.ELOOP:
            return None
        raise


def _read_to_end(fd: int) -> bytes:
    # Plain reads on the descriptor, no file object: one read for a small file, and one that sees its end.
    chunks = []
    while chunk := os.read(fd, _READ_SIZE):
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _walk(directory: str, rel: str, prefix: str) -> Iterator[str]:
    try:
        with os.scandir(directory) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False), e) for e in it]
    except (FileNotFoundError, NotADirectoryError):
        return  # an empty listing, as S3 gives for a prefix with no objects
    except OSError as exc:
        raise _wrap_os_error(exc, directory) from exc
    # A directory sorts as "name/": S3 lists keys in byte order, where "a-b" comes before "a/b".
    entries.sort(key=lambda entry: entry[0] + "/" if entry[1] else entry[0])
    for name, is_dir, entry in entries:
        key = rel + name
        if is_dir:
            # Descend only where the prefix and this subtree can overlap.
            if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                yield from _walk(os.path.join(directory, name), key + "/", prefix)
        elif key.startswith(prefix) and not _is_tmp(name) and _is_file(entry):
            yield key


def _is_file(entry: os.DirEntry[str]) -> bool:
    # A regular file or a symlink to one, as os.path.isfile says, from the listing's file type (no stat).
    try:
        return entry.is_file()
    except OSError:
        return False


def _is_tmp(name: str) -> bool:
    return name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX)


def _replace_atomically(path: str, fill: Callable[[BinaryIO], object]) -> None:
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f"{_TMP_PREFIX}{name}.{secrets.token_hex(8)}{_TMP_SUFFIX}")
    try:
        os.makedirs(directory, exist_ok=True)
        # os.open with 0o666 (not mkstemp's 0o600) so that the object gets the umask's usual permissions.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise _wrap_os_error(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            # fsync before the rename: after a crash the key holds the old object or the new one, never a
            # truncated file.
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise _wrap_os_error(exc, path) from exc
        raise


def _wrap_os_error(exc: OSError, path: str) -> StorageError:
    # A directory where a file was expected is a missing object too: S3 would answer NoSuchKey.
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        return ObjectNotFound(f"no such file: {path}", url=path)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(f"permission denied: {path}", url=path)
    return StorageError(f"{exc.strerror or exc}: {path}", url=path)
