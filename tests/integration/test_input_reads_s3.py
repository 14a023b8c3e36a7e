"""A worker's reads of inputs in S3 (moto_server): sizes from the answer's headers before the body is read,
tar member ranges checked against the limit, the shard's size and the member's header."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest

from jobs.errors import ImageTooLarge, InputMissing, InputNotAllowed
from jobs.inputs import read_allowed_input
from storage import S3Options, StorageError
from storage.s3 import S3Answer
from tests.webdataset_helpers import jpeg_bytes, write_shard

pytestmark = pytest.mark.integration

MAX_BYTES = 100_000


@pytest.fixture
def bodies_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs whose GET answer had its body read, in order."""
    read: list[str] = []
    real = S3Answer.read

    def record(answer: S3Answer, amount: int | None = None) -> bytes:
        read.append(answer.url)
        return real(answer, amount)

    monkeypatch.setattr(S3Answer, "read", record)
    return read


def test_an_object_over_the_limit_is_refused_before_its_body_is_read(  # type: ignore[no-untyped-def]
    s3_options: S3Options, s3_bucket: str, s3_boto_client, bodies_read: list[str]
) -> None:
    s3_boto_client.put_object(Bucket=s3_bucket, Key="inputs/big.png", Body=bytes(MAX_BYTES + 1))
    s3_boto_client.put_object(Bucket=s3_bucket, Key="inputs/small.jpg", Body=jpeg_bytes(0))
    s3_boto_client.put_object(Bucket=s3_bucket, Key="private/small.jpg", Body=jpeg_bytes(0))
    roots = [f"s3://{s3_bucket}/inputs"]
    big = f"s3://{s3_bucket}/inputs/big.png"

    with pytest.raises(ImageTooLarge, match=f"has {MAX_BYTES + 1} bytes; the limit is {MAX_BYTES}"):
        read_allowed_input(big, roots, s3_options, MAX_BYTES)
    assert bodies_read == []
    assert read_allowed_input(
        f"s3://{s3_bucket}/inputs/small.jpg", roots, s3_options, MAX_BYTES
    ) == jpeg_bytes(0)
    with pytest.raises(InputNotAllowed):
        read_allowed_input(f"s3://{s3_bucket}/private/small.jpg", roots, s3_options, MAX_BYTES)


def test_member_ranges_are_checked_before_the_member_is_read(  # type: ignore[no-untyped-def]
    s3_options: S3Options, s3_bucket: str, s3_boto_client, tmp_path: Path, bodies_read: list[str]
) -> None:
    write_shard(tmp_path, 0, 2)
    s3_boto_client.upload_file(str(tmp_path / "00000.tar"), s3_bucket, "inputs/00000.tar")
    with tarfile.open(tmp_path / "00000.tar") as tar:
        first, second = (info for info in tar.getmembers() if info.name.endswith(".jpg"))
    size = (tmp_path / "00000.tar").stat().st_size
    shard, roots = f"s3://{s3_bucket}/inputs/00000.tar", [f"s3://{s3_bucket}/inputs"]

    def read(member: str, offset: int, length: int) -> Any:
        return read_allowed_input(f"{shard}#{member}@{offset}+{length}", roots, s3_options, MAX_BYTES)

    assert read(first.name, first.offset_data, first.size) == jpeg_bytes(0)
    bodies_read.clear()
    with pytest.raises(ImageTooLarge, match="the member has 1000000000000000 bytes"):
        read(first.name, 0, 10**15)
    with pytest.raises(InputMissing, match=f"the shard has {size} bytes and the member would end at byte"):
        read(first.name, size - 512, 1024)  # the answer is shorter than the range: nothing read
    assert bodies_read == []
    with pytest.raises(InputMissing, match=f"names '{second.name}', not '{first.name}'"):
        read(first.name, second.offset_data, second.size)
    with pytest.raises(InputMissing, match=rf"gives {first.size} bytes, not {first.size + 1}"):
        read(first.name, first.offset_data, first.size + 1)
    with pytest.raises(StorageError, match="InvalidRange"):
        read(first.name, size + 1024, 10)  # the range starts past the end: S3 refuses it
    with pytest.raises(InputNotAllowed):
        read_allowed_input(
            f"{shard}#{first.name}@{first.offset_data}+{first.size}", [f"s3://{s3_bucket}/x"], s3_options
        )
