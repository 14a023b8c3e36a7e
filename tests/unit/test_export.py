"""Every export format, on SQLite and local storage: rows, caption files, the manifest with a column."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.errors import InvalidParameters
from jobs.lifecycle import JobKind
from tests.helpers import embedded_settings, write_photos
from tests.webdataset_helpers import write_shard
from workers.chunk import run_chunk
from workers.embedded import EmbeddedRunner


def _jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_as_jsonl_and_parquet_also_while_the_job_runs(tmp_path: Path) -> None:
    # Without read-ahead: the chunk would claim the job's last items ahead and, nothing else being queued,
    # run them too.
    settings = embedded_settings(tmp_path, chunk_size=4, read_ahead=False)
    photos = write_photos(tmp_path / "in", count=6)
    photos[1].write_bytes(b"not a jpeg")
    runner = EmbeddedRunner(settings)
    job_id = runner.client.submit(JobKind.CAPTION, str(tmp_path / "in"))
    run_chunk(runner.runtime, JobKind.CAPTION, job_id, 0, 4)  # the first chunk only: the job is half done

    assert runner.client.export(job_id, str(tmp_path / "part.jsonl")) == 6
    rows = _jsonl(tmp_path / "part.jsonl")
    assert [(r["id"], r["status"]) for r in rows] == [
        ("photo000.jpg", "succeeded"),
        ("photo001.jpg", "failed"),
        ("photo002.jpg", "succeeded"),
        ("photo003.jpg", "succeeded"),
        ("photo004.jpg", "queued"),
        ("photo005.jpg", "queued"),
    ]
    assert rows[0]["input"] == str(photos[0]) and str(rows[0]["output"]).startswith("image ")
    assert (rows[1]["error_code"], rows[4]["output"]) == ("invalid_image", None)

    count = runner.client.export(job_id, str(tmp_path / "ok.parquet"), "parquet", statuses=["succeeded"])
    table = pq.read_table(tmp_path / "ok.parquet")
    assert count == table.num_rows == 3
    assert table.column_names == [
        "id",
        "input",
        "prompt",
        "output",
        "status",
        "error_code",
        "error",
        "attempts",
    ]
    with pytest.raises(InvalidParameters, match="unknown item state"):
        runner.client.export(job_id, str(tmp_path / "x.jsonl"), statuses=["done"])


def test_caption_files_beside_each_image_or_under_a_folder(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "in" / "sub", count=2)
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(tmp_path / "in"))
    client = EmbeddedRunner(settings).client
    assert client.export(report.id, None, "txt") == 2
    caption = (tmp_path / "in" / "sub" / "photo000.txt").read_text()
    assert caption.startswith("image ") and "photo000.jpg" not in caption
    assert client.export(report.id, str(tmp_path / "captions"), "txt") == 2
    assert (tmp_path / "captions" / "sub" / "photo001.txt").read_text().startswith("image ")

    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    generated = EmbeddedRunner(settings).run(JobKind.GENERATE, str(prompts))
    with pytest.raises(InvalidParameters, match="caption files are for caption jobs"):
        client.export(generated.id, None, "txt")


def test_jsonl_manifest_gets_a_caption_column_matched_by_id(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "img", count=3)
    records = [
        {"id": f"r{i}", "image": f"img/photo{i:03d}.jpg", "license": "cc-by", "nested": {"w": i}}
        for i in range(3)
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(manifest))
    client = EmbeddedRunner(settings).client
    rows = {r["id"]: r["output"] for r in client_rows(client, report.id, tmp_path)}

    # The manifest changes order after submission: outputs still follow ids, not positions.
    manifest.write_text("".join(json.dumps(r) + "\n" for r in reversed(records)))
    assert client.export(report.id, str(tmp_path / "out.jsonl"), "manifest") == 3
    written = _jsonl(tmp_path / "out.jsonl")
    assert [w["id"] for w in written] == ["r2", "r1", "r0"]
    assert all(w["caption"] == rows[w["id"]] and w["license"] == "cc-by" for w in written)
    assert written[0]["nested"] == {"w": 2}


def client_rows(client, job_id: str, tmp_path: Path) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    client.export(job_id, str(tmp_path / "rows.jsonl"))
    return _jsonl(tmp_path / "rows.jsonl")


def test_csv_and_parquet_manifests_keep_their_format(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "img", count=3)
    (tmp_path / "m.csv").write_text(
        "id,image,caption\n" + "".join(f"c{i},img/photo{i:03d}.jpg,old {i}\n" for i in range(3))
    )
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(tmp_path / "m.csv"))
    client = EmbeddedRunner(settings).client
    with pytest.raises(InvalidParameters, match="already has a 'caption' field"):
        client.export(report.id, str(tmp_path / "out.csv"), "manifest")
    client.export(report.id, str(tmp_path / "out.csv"), "manifest", column="ovis_caption")
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["id"], r["caption"]) for r in rows] == [("c0", "old 0"), ("c1", "old 1"), ("c2", "old 2")]
    assert all(r["ovis_caption"].startswith("image ") for r in rows)
    client.export(report.id, str(tmp_path / "replaced.csv"), "manifest", column="caption")
    with open(tmp_path / "replaced.csv", newline="") as handle:
        assert all(r["caption"].startswith("image ") for r in csv.DictReader(handle))

    table = pa.Table.from_pylist(
        [{"key": f"p{i}", "file": f"img/photo{i:03d}.jpg", "w": i} for i in range(3)]
    )
    pq.write_table(table, tmp_path / "m.parquet")
    (tmp_path / "img" / "photo001.jpg").write_bytes(b"broken")
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(tmp_path / "m.parquet"))
    assert client.export(report.id, str(tmp_path / "out.parquet"), "manifest") == 3
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(r["key"], r["w"]) for r in out] == [("p0", 0), ("p1", 1), ("p2", 2)]
    assert out[1]["caption"] is None and str(out[0]["caption"]).startswith("image ")


def test_generate_manifest_gets_output_uris(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "fox", "prompt": "a fox"}) + "\n")
    report = EmbeddedRunner(settings).run(JobKind.GENERATE, str(tmp_path / "p.jsonl"))
    client = EmbeddedRunner(settings).client
    client.export(report.id, str(tmp_path / "out.jsonl"), "manifest")
    [row] = _jsonl(tmp_path / "out.jsonl")
    assert row["output"] == str(tmp_path / "outputs" / report.id / "fox.png")
    assert Path(str(row["output"])).is_file()


def test_webdataset_job_gets_per_shard_parquet_with_captions(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    keys = write_shard(tmp_path / "wds", 0, 4, failed=(3,)) + write_shard(tmp_path / "wds", 1, 2)
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(tmp_path / "wds"))
    assert report.succeeded == len(keys) == 5
    client = EmbeddedRunner(settings).client
    assert client.export(report.id, str(tmp_path / "recaptioned"), "manifest", column="recaption") == 6
    shard0 = pq.read_table(tmp_path / "recaptioned" / "00000.parquet").to_pylist()
    assert [r["caption"] for r in shard0] == [f"alt text 00000{i:04d}" for i in range(4)]
    assert [r["recaption"] is None for r in shard0] == [False, False, False, True]
    assert client.export(report.id, str(tmp_path / "caps"), "txt") == 5
    assert (tmp_path / "caps" / f"{keys[0]}.txt").read_text().startswith("image ")
    with pytest.raises(InvalidParameters, match="no place beside them"):
        client.export(report.id, None, "txt")
