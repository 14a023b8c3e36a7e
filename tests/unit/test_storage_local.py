"""The local directory store."""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from storage import AccessDenied, LocalStore, ObjectNotFound, StorageError, open_store, read_url
from storage.local import LocalFile, read_file


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_write_read_exists_delete(store: LocalStore, tmp_path: Path) -> None:
    url = store.write("job-1/0.txt", b"a caption", content_type="text/plain")

    assert url == str(tmp_path / "store" / "job-1" / "0.txt")
    assert store.url_for("job-1/0.txt") == url
    assert store.read("job-1/0.txt") == b"a caption"
    assert read_url(url) == b"a caption"
    assert store.exists("job-1/0.txt")

    store.delete("job-1/0.txt")

    assert not store.exists("job-1/0.txt")
    store.delete("job-1/0.txt")  # deleting a missing object is not an error


def test_root_is_absolute_and_made_on_first_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("relative/out")

    assert store.url == str(tmp_path / "relative" / "out")
    assert not (tmp_path / "relative").exists()
    assert list(store.iter_keys()) == []
    store.write("a", b"1")
    assert (tmp_path / "relative" / "out" / "a").read_bytes() == b"1"


def test_overwrite_replaces_and_leaves_no_temporary_files(store: LocalStore) -> None:
    store.write("out/1.png", b"first")
    store.write("out/1.png", b"second")

    assert store.read("out/1.png") == b"second"
    assert os.listdir(os.path.join(store.root, "out")) == ["1.png"]


def test_concurrent_writes_to_one_key_leave_a_whole_object(store: LocalStore) -> None:
    payloads = [bytes([i]) * 100_000 for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda data: store.write("same.bin", data), payloads))

    assert store.read("same.bin") in payloads
    assert list(store.iter_keys()) == ["same.bin"]


def test_written_files_follow_the_umask(store: LocalStore) -> None:
    previous = os.umask(0o022)
    try:
        path = store.write("a.txt", b"x")
    finally:
        os.umask(previous)

    assert os.stat(path).st_mode & 0o777 == 0o644


def test_missing_key_is_object_not_found(store: LocalStore) -> None:
    with pytest.raises(ObjectNotFound) as info:
        store.read("absent.png")

    assert info.value.error_code == "input_missing"
    assert not info.value.transient
    assert store.url_for("absent.png") in str(info.value)
    with pytest.raises(ObjectNotFound):
        read_url(store.url_for("absent.png"))
    store.write("file", b"x")
    with pytest.raises(ObjectNotFound):
        store.read("file/below-a-file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_access_denied(store: LocalStore) -> None:
    path = store.write("secret", b"x")
    os.chmod(path, 0)

    with pytest.raises(AccessDenied) as info:
        store.read("secret")

    assert info.value.error_code == "access_denied"


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside", "a/../../outside", "a/./b", "a//b", "a/"])
def test_keys_that_could_escape_the_root_are_refused(store: LocalStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.write(key, b"x")
    with pytest.raises(ValueError):
        store.read(key)
    with pytest.raises(ValueError):
        store.url_for(key)
    assert not os.path.exists(os.path.join(os.path.dirname(store.root), "outside"))


def test_iter_keys_is_recursive_in_s3_order_and_filters_by_prefix(store: LocalStore) -> None:
    keys = ["b.txt", "a/2.txt", "a/1.txt", "a-b.txt", "a/deep/x.txt", "ab/3.txt", "c/.hidden"]
    for key in keys:
        store.write(key, b"x")

    listed = list(store.iter_keys())

    assert listed == sorted(keys)  # byte order, as S3 lists: "a-b.txt" before "a/1.txt"
    assert list(store.iter_keys("a/")) == ["a/1.txt", "a/2.txt", "a/deep/x.txt"]
    assert list(store.iter_keys("a")) == ["a-b.txt", "a/1.txt", "a/2.txt", "a/deep/x.txt", "ab/3.txt"]
    assert list(store.iter_keys("a/d")) == ["a/deep/x.txt"]
    assert list(store.iter_keys("missing/")) == []
    with pytest.raises(ValueError):
        list(store.iter_keys("../"))


def test_iter_keys_skips_writes_in_progress(store: LocalStore) -> None:
    store.write("done.png", b"x")
    Path(store.root, ".half.png.0123456789abcdef.ovis-tmp").write_bytes(b"partial")

    assert list(store.iter_keys()) == ["done.png"]


def test_upload_file_copies_atomically(store: LocalStore, tmp_path: Path) -> None:
    source = tmp_path / "export.jsonl"
    source.write_bytes(b'{"a": 1}\n' * 1000)

    url = store.upload_file("exports/job.jsonl", source, content_type="application/jsonl")

    assert Path(url).read_bytes() == source.read_bytes()
    with pytest.raises(StorageError):
        store.upload_file("exports/none.jsonl", tmp_path / "none.jsonl")


# -- reading a pinned file -----------------------------------------------------------------------------------
def _without_blocking(call: Callable[[], object]) -> BaseException | None:
    """Run `call` on a thread; fail the test (instead of hanging it) if it blocks; return what it raised."""
    raised: list[BaseException | None] = [None]

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised[0] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)  # a guard against hanging the run, not a timing: a blocked read never returns
    assert not thread.is_alive(), "the read blocked"
    return raised[0]


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.jpg")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "socket.jpg"))
    (tmp_path / "folder.jpg").mkdir()
    specials = {
        str(tmp_path / "fifo.jpg"): "a FIFO",
        str(tmp_path / "socket.jpg"): "a socket",
        str(tmp_path / "folder.jpg"): "a directory",
        "/dev/zero": "a character device",
    }
    try:
        for path, kind in specials.items():
            with LocalFile(path) as file:
                assert file.kind == kind
            error = _without_blocking(functools.partial(read_file, path))
            assert isinstance(error, ObjectNotFound) and f"{path} is {kind}, not a file" in str(error)
    finally:
        listener.close()


def test_a_pinned_file_tells_its_size_and_real_path_before_any_read(tmp_path: Path) -> None:
    sparse = tmp_path / "data" / "sparse.png"
    sparse.parent.mkdir()
    with open(sparse, "wb") as out:
        out.truncate(600 * 1024 * 1024)
    (tmp_path / "link.png").symlink_to(sparse)
    with LocalFile(str(tmp_path / "link.png")) as file:
        assert (file.kind, file.size, file.real_path) == (None, 600 * 1024 * 1024, str(sparse))
        assert file.read(1024, 16) == bytes(16)  # a range, not the whole file


def test_a_pinned_file_is_what_is_read_whatever_its_path_becomes(tmp_path: Path) -> None:
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "a.jpg").write_bytes(b"checked")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "a.jpg").write_bytes(b"secret")
    with LocalFile(str(tmp_path / "inside" / "a.jpg")) as file:
        # The folder swapped for a link to another one between the check of real_path and the read.
        (tmp_path / "inside").rename(tmp_path / "moved")
        (tmp_path / "inside").symlink_to(tmp_path / "outside")
        assert file.read() == b"checked"
        assert file.real_path == str(tmp_path / "inside" / "a.jpg")  # where it was when pinned


def test_a_file_cut_after_it_was_pinned_fails_the_read(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"0123456789")
    with LocalFile(str(path)) as file:
        assert file.read(2, 3) == b"234"
        os.truncate(path, 4)
        with pytest.raises(StorageError, match="ends at byte 4"):
            file.read()
