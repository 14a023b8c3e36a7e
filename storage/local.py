"""A store in a local directory: the embedded default, for the quick start and tests."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO

from storage.base import DEFAULT_CONTENT_TYPE, Store, check_key, check_prefix, check_presign_seconds
from storage.errors import AccessDenied, ObjectNotFound, StorageError

# Writes go to a hidden temporary file next to the target and are renamed over it; listings skip these so
# a reader never sees a half-written object.
_TMP_PREFIX = "."
_TMP_SUFFIX = ".ovis-tmp"

_PINNED_BY_PATH = hasattr(os, "O_PATH")
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer (only where O_PATH is missing does
# a special file get opened at all).
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
_PIN_FLAGS = (os.O_PATH | os.O_CLOEXEC) if _PINNED_BY_PATH else _READ_FLAGS
_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class LocalStore(Store):
    """Objects as files under one directory; keys map to relative paths. The directory is made on first write.

    Symlinks to files are followed; symlinked directories are not listed (they could loop). Confining
    inputs that may be symlinks is the job of the caller, with ``LocalFile.real_path`` (the file actually
    opened) or ``is_within`` (real paths now).
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
            raise wrap_os_error(exc, source) from exc
        return target

    def exists(self, key: str) -> bool:
        """Return whether a regular file is stored under ``key``."""
        return os.path.isfile(self.path_for(key))

    def presign(self, key: str, seconds: int) -> str | None:
        """None: a local file has no link to give."""
        check_key(key)
        check_presign_seconds(seconds)
        return None

    def check_writable(self) -> None:
        """The directory exists or can be made, and is writable."""
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise wrap_os_error(exc, self.root) from exc
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
            raise wrap_os_error(exc, path) from exc

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        """Yield keys starting with ``prefix``, depth first, in the order S3 would list them."""
        check_prefix(prefix)
        # Start at the deepest directory the prefix names instead of walking the whole tree.
        start = prefix.rpartition("/")[0]
        base = start + "/" if start else ""
        top = os.path.join(self.root, *start.split("/")) if start else self.root
        yield from _walk(top, base, prefix)


def read_file(path: str) -> bytes:
    """Read one local regular file whole; a FIFO, device, socket or directory is refused without blocking."""
    with LocalFile(path) as file:
        return file.read()


class LocalFile:
    """A local file pinned before any of it is read: what it is, how large, and where it really lies.

    On Linux the path is opened with O_PATH, which resolves it (symlinks followed) and pins the file without
    opening it for reading: nothing blocks on a FIFO and no device driver runs for a file that is then
    refused. ``real_path`` is the path of the pinned file itself, read back from the kernel, so a check of it
    holds for the bytes read later, whatever is renamed or swapped in between. Reads reopen the pinned file
    through /proc, never the path. Where O_PATH is missing (macOS) the file is opened non-blocking instead.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._handle = os.open(path, _PIN_FLAGS)
        except OSError as exc:
            raise wrap_os_error(exc, path) from exc
        try:
            self.stat = os.fstat(self._handle)
            self.real_path = _pinned_path(self._handle)
        except OSError as exc:
            os.close(self._handle)
            raise wrap_os_error(exc, path) from exc

    @property
    def kind(self) -> str | None:
        """What the file is when it is not a regular file ("a FIFO", "a directory", ...); None for one."""
        mode = self.stat.st_mode
        if stat.S_ISREG(mode):
            return None
        for test, name in _KINDS:
            if test(mode):
                return name
        return "not a regular file"

    @property
    def size(self) -> int:
        """The file's size in bytes when it was pinned."""
        return self.stat.st_size

    def read(self, offset: int = 0, size: int | None = None) -> bytes:
        """``size`` bytes from ``offset`` (the rest of the file, by its pinned size, when None).

        ObjectNotFound for anything but a regular file; StorageError when the file ends before ``size``
        bytes (it was cut after it was pinned).
        """
        if self.kind is not None:
            raise ObjectNotFound(f"{self.path} is {self.kind}, not a file", url=self.path)
        if size is None:
            size = max(0, self.size - offset)
        try:
            fd = os.open(f"/proc/self/fd/{self._handle}", _READ_FLAGS) if _PINNED_BY_PATH else self._handle
            try:
                data = _pread_exactly(fd, size, offset)
            finally:
                if fd != self._handle:
                    os.close(fd)
        except OSError as exc:
            raise wrap_os_error(exc, self.path) from exc
        if len(data) != size:
            raise StorageError(
                f"{self.path} ends at byte {offset + len(data)}, before the {size} bytes asked from byte "
                f"{offset}: was it cut while it was read?",
                url=self.path,
            )
        return data

    def close(self) -> None:
        """Let go of the pinned file."""
        os.close(self._handle)

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _pinned_path(fd: int) -> str:
    """The path of the file behind ``fd``, as the kernel holds it (symlinks resolved)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        get_path = getattr(fcntl, "F_GETPATH", None)  # macOS
        if get_path is None:
            unknown = "/proc is not mounted: the real path of an open file is unknown"
            raise OSError(errno.ENOTSUP, unknown) from None
    path = fcntl.fcntl(fd, get_path, bytes(1024))  # MAXPATHLEN
    return os.fsdecode(path.split(b"\0", 1)[0])


def _pread_exactly(fd: int, size: int, offset: int) -> bytes:
    # One read for a whole image in practice; the loop covers reads the kernel cuts short.
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    done = len(data)
    while done < size and (part := os.pread(fd, size - done, offset + done)):
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def _walk(directory: str, rel: str, prefix: str) -> Iterator[str]:
    try:
        with os.scandir(directory) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False), e) for e in it]
    except (FileNotFoundError, NotADirectoryError):
        return  # an empty listing, as S3 gives for a prefix with no objects
    except OSError as exc:
        raise wrap_os_error(exc, directory) from exc
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
        raise wrap_os_error(exc, path) from exc
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
            raise wrap_os_error(exc, path) from exc
        raise


def wrap_os_error(exc: OSError, path: str) -> StorageError:
    """Translate an OSError about ``path`` into the package's error; the caller raises it."""
    # A directory where a file was expected is a missing object too: S3 would answer NoSuchKey.
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        return ObjectNotFound(f"no such file: {path}", url=path)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(f"permission denied: {path}", url=path)
    return StorageError(f"{exc.strerror or exc}: {path}", url=path)
