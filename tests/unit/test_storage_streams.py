"""Local objects read as streams: files opened as they are, failures as the storage package's errors."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from storage import ObjectNotFound, open_seekable, open_stream


def test_local_files_are_read_whole_or_anywhere(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n')

    with open_stream(str(path)) as stream:
        assert list(stream) == [b'{"id": "a"}\n', b'{"id": "b"}\n']
    with open_seekable(path.as_uri()) as reader:
        reader.seek(-5, io.SEEK_END)
        assert reader.read() == b'"b"}\n'


@pytest.mark.parametrize("opener", [open_stream, open_seekable])
def test_what_is_not_a_file_is_object_not_found(tmp_path: Path, opener: Callable[[str], IO[bytes]]) -> None:
    for path in (tmp_path / "missing.jsonl", tmp_path):
        with pytest.raises(ObjectNotFound) as info:
            opener(str(path))
        assert info.value.url == str(path)


@pytest.mark.parametrize("opener", [open_stream, open_seekable])
def test_a_bucket_is_not_an_object(opener: Callable[[str], IO[bytes]]) -> None:
    with pytest.raises(ValueError, match="names a bucket, not an object"):
        opener("s3://bucket")
