"""Exports to an S3 server (moto_server): the `--out` rule for prefixes and objects, caption files beside S3
inputs or under a prefix, and img2dataset shards in S3 exported as per-shard Parquet under a prefix."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.errors import InvalidExport
from jobs.export import ExportOptions, write_export
from jobs.lifecycle import JobKind
from jobs.settings import Settings
from storage import S3Options
from tests.export_helpers import captioned_job
from tests.helpers import embedded_settings
from tests.webdataset_helpers import write_shard
from workers.embedded import EmbeddedRunner

pytestmark = pytest.mark.integration


@pytest.fixture
def config(tmp_path: Path, s3_options: S3Options, s3_bucket: str) -> Settings:
    return embedded_settings(
        tmp_path,
        input_roots=[str(tmp_path), f"s3://{s3_bucket}"],
        s3_endpoint_url=s3_options.endpoint_url,
        s3_region=s3_options.region,
        s3_access_key_id=s3_options.access_key_id,
        s3_secret_access_key=s3_options.secret_access_key,
        s3_addressing_style="path",
    )


def _keys(client, bucket: str) -> list[str]:  # type: ignore[no-untyped-def]
    listed = client.list_objects_v2(Bucket=bucket)
    return sorted(entry["Key"] for entry in listed.get("Contents", []))


def _body(client, bucket: str, key: str) -> bytes:  # type: ignore[no-untyped-def]
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_rows_go_into_a_prefix_or_an_object_of_their_format(  # type: ignore[no-untyped-def]
    config: Settings, s3_bucket: str, s3_boto_client
) -> None:
    job_id = captioned_job(config, [(f"p{n}.jpg", f"s3://{s3_bucket}/in/p{n}.jpg", True) for n in range(3)])
    bucket = f"s3://{s3_bucket}"

    report = write_export(config, job_id, f"{bucket}/exports/", ExportOptions("jsonl"))
    assert report.destination == f"{bucket}/exports/{job_id}.jsonl"
    assert _keys(s3_boto_client, s3_bucket) == [f"exports/{job_id}.jsonl"]
    rows = _body(s3_boto_client, s3_bucket, f"exports/{job_id}.jsonl").decode().splitlines()
    assert [json.loads(row)["id"] for row in rows] == ["p0.jpg", "p1.jpg", "p2.jpg"]

    # An object named by the user is replaced whole on a re-run.
    s3_boto_client.put_object(Bucket=s3_bucket, Key="exports/rows.parquet", Body=b"an earlier export")
    assert write_export(config, job_id, f"{bucket}/exports/rows.parquet", ExportOptions("parquet")).count == 3
    table = pq.read_table(io.BytesIO(_body(s3_boto_client, s3_bucket, "exports/rows.parquet")))
    assert table.num_rows == 3

    for out, message in [
        (f"{bucket}/captions.csv", r"names a \.csv file, but a jsonl export is a \.jsonl file"),
        (f"{bucket}/exports", "names a file without an extension"),
    ]:
        with pytest.raises(InvalidExport, match=message):
            write_export(config, job_id, out, ExportOptions("jsonl"))
    with pytest.raises(InvalidExport, match="names a file, but caption files are one per item"):
        write_export(config, job_id, f"{bucket}/captions.txt", ExportOptions("txt"))
    assert _keys(s3_boto_client, s3_bucket) == [f"exports/{job_id}.jsonl", "exports/rows.parquet"]


def test_caption_files_beside_s3_inputs_and_under_a_prefix(  # type: ignore[no-untyped-def]
    config: Settings, s3_bucket: str, s3_boto_client
) -> None:
    bucket = f"s3://{s3_bucket}"
    for name in ("a.jpg", "a.png", "notes.txt", "b.jpg"):
        s3_boto_client.put_object(Bucket=s3_bucket, Key=f"in/{name}", Body=b"image bytes")
    clashing = captioned_job(
        config, [(name, f"{bucket}/in/{name}", True) for name in ("a.jpg", "a.png", "notes.txt")]
    )
    with pytest.raises(InvalidExport, match=r"items 'a\.jpg', 'a\.png' would share s3://.*/in/a\.txt"):
        write_export(config, clashing, None, ExportOptions("txt"))
    assert _keys(s3_boto_client, s3_bucket) == ["in/a.jpg", "in/a.png", "in/b.jpg", "in/notes.txt"]

    job_id = captioned_job(
        config,
        [
            ("b.jpg", f"{bucket}/in/b.jpg", True),
            ("../../esc.png", f"{bucket}/in/a.jpg", True),
            ("esc.png", f"{bucket}/in/a.png", True),
        ],
    )
    report = write_export(config, job_id, f"{bucket}/caps/", ExportOptions("txt"))
    assert report.describe() == f"wrote 3 caption files under {bucket}/caps"
    assert _body(s3_boto_client, s3_bucket, "caps/%2E%2E/%2E%2E/esc.txt") == b"caption of ../../esc.png"
    assert _body(s3_boto_client, s3_bucket, "caps/esc.txt") == b"caption of esc.png"
    assert _body(s3_boto_client, s3_bucket, "caps/b.txt") == b"caption of b.jpg"

    beside = captioned_job(config, [("b.jpg", f"{bucket}/in/b.jpg", True)])
    assert write_export(config, beside, None, ExportOptions("txt")).count == 1
    assert _body(s3_boto_client, s3_bucket, "in/b.txt") == b"caption of b.jpg"
    assert _body(s3_boto_client, s3_bucket, "in/notes.txt") == b"image bytes"


def test_img2dataset_shards_in_s3_get_their_manifests_under_a_prefix(  # type: ignore[no-untyped-def]
    config: Settings, s3_bucket: str, s3_boto_client, tmp_path: Path
) -> None:
    write_shard(tmp_path / "wds", 0, 3, failed=(1,))
    write_shard(tmp_path / "wds", 1, 2)
    (tmp_path / "wds" / "_stats.json").write_text(json.dumps({"count": 5}))
    for path in sorted((tmp_path / "wds").iterdir()):
        s3_boto_client.upload_file(str(path), s3_bucket, f"wds/{path.name}")
    shards = f"s3://{s3_bucket}/wds/"
    report = EmbeddedRunner(config).run(JobKind.CAPTION, shards)
    assert report.succeeded == 4

    written = write_export(config, report.id, f"s3://{s3_bucket}/recaptioned/", ExportOptions("manifest"))
    assert (written.count, written.files) == (5, 2)
    shard0 = pq.read_table(
        io.BytesIO(_body(s3_boto_client, s3_bucket, "recaptioned/00000.parquet"))
    ).to_pylist()
    assert [row["caption"] for row in shard0] == [f"alt text 00000{i:04d}" for i in range(3)]
    assert [row["ovis_caption"] is None for row in shard0] == [False, True, False]

    with pytest.raises(InvalidExport, match="a manifest of the job's shards"):
        write_export(config, report.id, shards, ExportOptions("manifest"))
    with pytest.raises(InvalidExport, match="one Parquet file per shard"):
        write_export(config, report.id, f"s3://{s3_bucket}/recaptioned.parquet", ExportOptions("manifest"))
    original = pq.read_table(io.BytesIO(_body(s3_boto_client, s3_bucket, "wds/00000.parquet")))
    assert "ovis_caption" not in original.column_names
