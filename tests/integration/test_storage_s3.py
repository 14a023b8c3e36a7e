"""The S3 store against a real S3 server (moto_server over HTTP)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from storage import (
    ObjectNotFound,
    S3Options,
    S3Store,
    open_store,
    read_url,
    s3_client,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration


def test_write_read_exists_delete(s3_options: S3Options, s3_bucket: str, s3_boto_client: S3Client) -> None:
    store = open_store(f"s3://{s3_bucket}/results", s3_options)

    url = store.write("job-1/0.txt", b"a caption", content_type="text/plain")

    assert url == f"s3://{s3_bucket}/results/job-1/0.txt"
    assert store.url == f"s3://{s3_bucket}/results"
    assert store.read("job-1/0.txt") == b"a caption"
    assert read_url(url, s3_options) == b"a caption"
    assert store.exists("job-1/0.txt")
    head = s3_boto_client.head_object(Bucket=s3_bucket, Key="results/job-1/0.txt")
    assert head["ContentType"] == "text/plain"

    store.delete("job-1/0.txt")

    assert not store.exists("job-1/0.txt")
    store.delete("job-1/0.txt")  # deleting again is harmless, as a redelivered cleanup would do


def test_overwrite_leaves_one_object(s3_options: S3Options, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}", s3_options)

    store.write("out/1.png", b"first")
    store.write("out/1.png", b"second")

    assert list(store.iter_keys()) == ["out/1.png"]
    assert store.read("out/1.png") == b"second"


def test_iter_keys_paginates_and_filters_by_prefix(s3_options: S3Options, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/in", s3_options)
    keys = [f"images/{i:05d}.jpg" for i in range(1005)] + ["imagesx/a.jpg", "other/b.jpg"]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: store.write(key, b"x"), keys))
    # Outside the store's prefix on a "/" boundary: must not be listed.
    open_store(f"s3://{s3_bucket}", s3_options).write("inside/c.jpg", b"x")

    assert list(store.iter_keys()) == sorted(keys)
    assert list(store.iter_keys("images/")) == sorted(keys)[:1005]
    assert list(store.iter_keys("images")) == sorted(keys)[:1006]
    assert list(store.iter_keys("nothing/")) == []


def test_upload_file_goes_multipart_above_threshold(
    s3_endpoint: str, s3_bucket: str, s3_boto_client: S3Client, tmp_path: Path
) -> None:
    options = S3Options(
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        addressing_style="path",
        multipart_threshold_mb=5,
    )
    store = open_store(f"s3://{s3_bucket}/exports", options)
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    small.write_bytes(b"{}\n")
    large.write_bytes(os.urandom(11 * 1024 * 1024))  # above 5 MiB: 8 MiB + 3 MiB parts

    small_url = store.upload_file("small.jsonl", small, content_type="application/jsonl")
    large_url = store.upload_file("large.jsonl", str(large), content_type="application/jsonl")

    assert large_url == f"s3://{s3_bucket}/exports/large.jsonl"
    head = s3_boto_client.head_object(Bucket=s3_bucket, Key="exports/large.jsonl")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart ETag carries the part count
    assert head["ContentType"] == "application/jsonl"
    assert store.read("large.jsonl") == large.read_bytes()
    assert "-" not in s3_boto_client.head_object(Bucket=s3_bucket, Key="exports/small.jsonl")["ETag"]
    assert read_url(small_url, options) == b"{}\n"


def test_missing_key_is_object_not_found(s3_options: S3Options, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/p", s3_options)

    with pytest.raises(ObjectNotFound) as info:
        store.read("absent.png")

    assert info.value.error_code == "input_missing"
    assert not info.value.transient
    assert info.value.url == f"s3://{s3_bucket}/p/absent.png"
    assert f"s3://{s3_bucket}/p/absent.png" in str(info.value)
    assert "testing" not in str(info.value)
    assert not store.exists("absent.png")


def test_missing_bucket_is_object_not_found(s3_options: S3Options) -> None:
    with pytest.raises(ObjectNotFound):
        read_url("s3://no-such-bucket-for-ovis/x.png", s3_options)


def test_one_client_per_process_per_options(s3_options: S3Options, s3_endpoint: str) -> None:
    equal_options = S3Options(
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        addressing_style="path",
    )
    first = open_store("s3://bucket-a", s3_options)
    second = open_store("s3://bucket-b/prefix", equal_options)
    assert isinstance(first, S3Store)
    assert isinstance(second, S3Store)

    assert first.client is second.client
    assert s3_client(s3_options) is first.client
    assert s3_client(S3Options(endpoint_url=s3_endpoint, region="eu-west-1")) is not first.client
