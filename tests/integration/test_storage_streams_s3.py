"""Objects in S3 (moto_server) read as streams: a GET body as it arrives, or ranged GETs behind a seekable
reader; every failure, at open or later while reading, is one of the storage package's errors."""

from __future__ import annotations

import io
import socket
from typing import TYPE_CHECKING

import pytest

from storage import (
    ObjectNotFound,
    S3Answer,
    S3Options,
    S3Store,
    StorageUnavailable,
    open_seekable,
    open_stream,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration

SIZE = 300_000
DATA = bytes(index % 251 for index in range(SIZE))


@pytest.fixture
def ranges(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int | None, int | None]]:
    """The (start, stop) of every GET a store makes, in order."""
    asked: list[tuple[int | None, int | None]] = []
    real = S3Store.get

    def record(store: S3Store, key: str, *, start: int | None = None, stop: int | None = None) -> S3Answer:
        asked.append((start, stop))
        return real(store, key, start=start, stop=stop)

    monkeypatch.setattr(S3Store, "get", record)
    return asked


def test_a_stream_reads_the_body_of_one_get(
    s3_options: S3Options,
    s3_bucket: str,
    s3_boto_client: S3Client,
    ranges: list[tuple[int | None, int | None]],
) -> None:
    lines = b"".join(b"line %d\n" % index for index in range(50_000))
    s3_boto_client.put_object(Bucket=s3_bucket, Key="m/list.txt", Body=lines)

    with open_stream(f"s3://{s3_bucket}/m/list.txt", s3_options) as stream:
        assert list(stream) == lines.splitlines(keepends=True)
    assert ranges == [(None, None)]


def test_a_seekable_reader_reads_what_is_asked_by_ranged_gets(
    s3_options: S3Options,
    s3_bucket: str,
    s3_boto_client: S3Client,
    ranges: list[tuple[int | None, int | None]],
) -> None:
    s3_boto_client.put_object(Bucket=s3_bucket, Key="data.bin", Body=DATA)

    with open_seekable(f"s3://{s3_bucket}/data.bin", s3_options) as reader:
        assert reader.seek(-10, io.SEEK_END) == SIZE - 10
        assert reader.read(10) == DATA[-10:]
        reader.seek(1000)
        assert reader.read(5) == DATA[1000:1005]
        assert reader.read() == DATA[1005:]
    assert ranges == [(SIZE - 10, SIZE), (1000, SIZE)]


def test_a_missing_object_is_object_not_found_when_opened(s3_options: S3Options, s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/missing.jsonl"
    for opener in (open_stream, open_seekable):
        with pytest.raises(ObjectNotFound) as info:
            opener(url, s3_options)
        assert info.value.url == url


def test_a_failure_while_reading_is_a_storage_error(
    s3_options: S3Options, s3_bucket: str, s3_boto_client: S3Client
) -> None:
    s3_boto_client.put_object(Bucket=s3_bucket, Key="gone.bin", Body=DATA)
    reader = open_seekable(f"s3://{s3_bucket}/gone.bin", s3_options)
    s3_boto_client.delete_object(Bucket=s3_bucket, Key="gone.bin")  # removed between HEAD and GET

    with reader, pytest.raises(ObjectNotFound):
        reader.read(10)


def test_an_unreachable_endpoint_is_storage_unavailable() -> None:
    with socket.socket() as sock:  # a port that was just free and has nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = S3Options(
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        addressing_style="path",
        max_attempts=1,
        connect_timeout_s=0.5,
    )
    for opener in (open_stream, open_seekable):
        with pytest.raises(StorageUnavailable):
            opener("s3://bucket/m.parquet", options)
