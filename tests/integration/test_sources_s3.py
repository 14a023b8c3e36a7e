"""Sources in S3 (moto_server): prefixes listed page by page, manifests and shards streamed."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.errors import InvalidSource
from jobs.inputs import read_input
from jobs.lifecycle import JobKind
from jobs.sources import iter_source
from storage import S3Options
from tests.webdataset_helpers import jpeg_bytes, write_shard

pytestmark = pytest.mark.integration


def test_prefix_listing_spans_pages(s3_options: S3Options, s3_bucket: str, s3_boto_client) -> None:  # type: ignore[no-untyped-def]
    for index in range(1003):
        folder = "deep/x" if index % 2 else "top"
        s3_boto_client.put_object(Bucket=s3_bucket, Key=f"in/{folder}/{index:04d}.jpg", Body=b"j")
    s3_boto_client.put_object(Bucket=s3_bucket, Key="in/readme.md", Body=b"not an image")
    s3_boto_client.put_object(Bucket=s3_bucket, Key="in/dir/", Body=b"")
    items = list(iter_source(JobKind.CAPTION, f"s3://{s3_bucket}/in", s3_options))
    assert len(items) == 1003
    assert items[0].key == "deep/x/0001.jpg" and items[0].source == f"s3://{s3_bucket}/in/deep/x/0001.jpg"


def test_manifests_stream_from_s3(s3_options: S3Options, s3_bucket: str, s3_boto_client) -> None:  # type: ignore[no-untyped-def]
    lines = "".join(json.dumps({"id": f"i{n}", "image": f"img/{n}.jpg"}) + "\n" for n in range(5000))
    s3_boto_client.put_object(Bucket=s3_bucket, Key="m/list.jsonl", Body=lines.encode())
    items = list(iter_source(JobKind.CAPTION, f"s3://{s3_bucket}/m/list.jsonl", s3_options))
    assert len(items) == 5000 and items[10].source == f"s3://{s3_bucket}/m/img/10.jpg"

    s3_boto_client.put_object(
        Bucket=s3_bucket, Key="m/edits.csv", Body=b"id,image,instruction\ne,s3://other/a.jpg,blue\n"
    )
    edits = list(iter_source(JobKind.EDIT, f"s3://{s3_bucket}/m/edits.csv", s3_options))
    assert [(e.key, e.source, e.text) for e in edits] == [("e", "s3://other/a.jpg", "blue")]

    buffer = io.BytesIO()
    rows = [{"id": f"p{n}", "prompt": f"a fox number {n}", "seed": n} for n in range(30_000)]
    pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=5000)
    s3_boto_client.put_object(Bucket=s3_bucket, Key="m/prompts.parquet", Body=buffer.getvalue())
    prompts = list(iter_source(JobKind.GENERATE, f"s3://{s3_bucket}/m/prompts.parquet", s3_options))
    assert len(prompts) == 30_000 and (prompts[-1].key, prompts[-1].params) == ("p29999", {"seed": 29999})

    with pytest.raises(InvalidSource, match="does not exist"):
        list(iter_source(JobKind.CAPTION, f"s3://{s3_bucket}/m/missing.jsonl", s3_options))


def test_webdataset_shards_in_s3(  # type: ignore[no-untyped-def]
    s3_options: S3Options, s3_bucket: str, s3_boto_client, tmp_path: Path
) -> None:
    keys = write_shard(tmp_path, 0, 4, failed=(1,)) + write_shard(tmp_path, 1, 2)
    for name in ("00000.tar", "00000.parquet", "00001.tar", "00001.parquet"):
        s3_boto_client.upload_file(str(tmp_path / name), s3_bucket, f"wds/{name}")
    for url in (f"s3://{s3_bucket}/wds/{{00000..00001}}.tar", f"s3://{s3_bucket}/wds/"):
        items = list(iter_source(JobKind.CAPTION, url, s3_options))
        assert [i.key for i in items] == keys
    # One ranged GET reads exactly the member: the bytes equal the image written into the shard.
    assert read_input(items[1].source, s3_options) == jpeg_bytes(2)
    assert Image.open(io.BytesIO(read_input(items[-1].source, s3_options))).format == "JPEG"


def test_manifests_from_s3_give_every_record_as_written(  # type: ignore[no-untyped-def]
    s3_options: S3Options, s3_bucket: str, s3_boto_client
) -> None:
    # Text read through a streamed GET (and gunzipped): BOM and CRLF dropped, ids never inferred, one item per
    # record; a Parquet file through ranged GETs with binary text columns.
    rows = [
        (f"2024-01-{n % 28 + 1:02d}" if n % 3 else str(n), f'a "fox", number {n}\r\nsits')
        for n in range(3001)
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # "\r\n" line ends, as Excel and Python write them
    writer.writerow(["id", "prompt"])
    writer.writerows(rows)
    s3_boto_client.put_object(Bucket=s3_bucket, Key="m/p.csv", Body=("\ufeff" + buffer.getvalue()).encode())
    lines = "".join(json.dumps({"id": key, "prompt": text}) + "\r\n" for key, text in rows)
    s3_boto_client.put_object(
        Bucket=s3_bucket, Key="m/p.jsonl.gz", Body=gzip.compress(("\ufeff" + lines).encode())
    )
    table = pa.table({"id": [k.encode() for k, _ in rows], "prompt": [t.encode() for _, t in rows]})
    parquet = io.BytesIO()
    pq.write_table(table, parquet, row_group_size=1000)
    s3_boto_client.put_object(Bucket=s3_bucket, Key="m/p.parquet", Body=parquet.getvalue())
    for name in ("p.csv", "p.jsonl.gz", "p.parquet"):
        items = list(iter_source(JobKind.GENERATE, f"s3://{s3_bucket}/m/{name}", s3_options))
        assert [(i.key, i.text) for i in items] == rows, name


def test_bad_text_in_an_s3_manifest_is_named_by_line(  # type: ignore[no-untyped-def]
    s3_options: S3Options, s3_bucket: str, s3_boto_client
) -> None:
    body = (
        b"".join(b'{"id": "i%d", "prompt": "p"}\n' % n for n in range(2000))
        + b'{"id": "x", "prompt": "\xff"}\n'
    )
    s3_boto_client.put_object(Bucket=s3_bucket, Key="m/bad.jsonl", Body=body)
    with pytest.raises(InvalidSource, match=r"bad\.jsonl line 2001: not valid UTF-8 \(byte 0xff"):
        list(iter_source(JobKind.GENERATE, f"s3://{s3_bucket}/m/bad.jsonl", s3_options))
    s3_boto_client.put_object(
        Bucket=s3_bucket, Key="m/bad.csv.gz", Body=gzip.compress(b"id,prompt\na,b\n")[:-6]
    )
    with pytest.raises(InvalidSource, match=r"bad\.csv\.gz line \d+: not readable as gzip data"):
        list(iter_source(JobKind.GENERATE, f"s3://{s3_bucket}/m/bad.csv.gz", s3_options))
