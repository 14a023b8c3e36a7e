"""Every export format, on SQLite and local storage: rows, caption files, the manifest with a column."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.errors import InvalidExport, InvalidParameters
from jobs.export import ExportOptions, write_export
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
        "gpu_seconds",
        "kind",
        "seed",
        "max_new_tokens",
        "temperature",
        "max_pixels",
        "model",
        "model_revision",
        "backend",
        "version",
    ]
    # The prompt the model got, the backend's default here, and numbers as numbers.
    first = table.to_pylist()[0]
    assert (first["prompt"], first["max_new_tokens"], first["kind"]) == (
        "Describe this image in detail.",
        32,
        "caption",
    )
    assert (
        table.schema.field("seed").type == pa.int64()
        and table.schema.field("temperature").type == pa.float64()
    )
    # Items not recorded yet have no provenance; their prompt is their own (the job's default: empty).
    assert (rows[4]["prompt"], rows[4]["seed"], rows[4]["backend"]) == ("", None, None)
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
    assert client.export(report.id, str(tmp_path / "captions") + "/", "txt") == 2
    assert (tmp_path / "captions" / "sub" / "photo001.txt").read_text().startswith("image ")
    # An existing folder needs no trailing slash; a path that is neither is a file, which txt refuses.
    assert client.export(report.id, str(tmp_path / "captions"), "txt") == 2
    with pytest.raises(InvalidExport, match="names a file, but caption files are one per item"):
        client.export(report.id, str(tmp_path / "new"), "txt")
    assert not (tmp_path / "new").exists()

    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    generated = EmbeddedRunner(settings).run(JobKind.GENERATE, str(prompts))
    with pytest.raises(InvalidParameters, match="caption files are for caption jobs"):
        client.export(generated.id, None, "txt")


def test_one_file_exports_follow_the_out_rule(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "in", count=2)
    job_id = EmbeddedRunner(settings).run(JobKind.CAPTION, str(tmp_path / "in")).id

    folder = write_export(settings, job_id, str(tmp_path / "exports") + "/", ExportOptions("jsonl"))
    assert folder.destination == str(tmp_path / "exports" / f"{job_id}.jsonl")
    assert len(_jsonl(tmp_path / "exports" / f"{job_id}.jsonl")) == folder.count == 2
    existing = write_export(settings, job_id, str(tmp_path / "exports"), ExportOptions("parquet"))
    assert existing.describe() == f"wrote 2 rows to {tmp_path / 'exports' / f'{job_id}.parquet'}"

    # A file destination is replaced whole on a re-run, through a temporary file beside it.
    target = tmp_path / "rows.jsonl"
    target.write_text("an earlier export\n")
    assert write_export(settings, job_id, str(target), ExportOptions("jsonl")).count == 2
    assert len(_jsonl(target)) == 2
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []

    for out, fmt, message in [
        ("captions.csv", "jsonl", "names a .csv file, but a jsonl export is a .jsonl file"),
        ("rows", "jsonl", "names a file without an extension"),
        ("x.jsonl", "parquet", "a parquet export is a .parquet file"),
    ]:
        with pytest.raises(InvalidExport, match=message):
            write_export(settings, job_id, str(tmp_path / out), ExportOptions(fmt))
        assert not (tmp_path / out).exists()
    with pytest.raises(InvalidExport, match="the jsonl export needs --out"):
        write_export(settings, job_id, None, ExportOptions("jsonl"))


def test_an_export_never_replaces_an_input_of_its_job(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "img", count=2)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": f"r{i}", "image": f"img/photo{i:03d}.jpg"}) + "\n" for i in range(2))
    )
    job_id = EmbeddedRunner(settings).run(JobKind.CAPTION, str(manifest)).id
    before = manifest.read_bytes()
    for fmt in ("jsonl", "manifest"):
        with pytest.raises(InvalidExport, match="is an input of job"):
            write_export(settings, job_id, str(manifest), ExportOptions(fmt))
    # The manifest export into the manifest's own folder would take the manifest's name.
    with pytest.raises(InvalidExport, match="is an input of job"):
        write_export(settings, job_id, str(tmp_path), ExportOptions("manifest"))
    assert manifest.read_bytes() == before

    # An image that a (strange but valid) manifest names like an export file is an input too.
    odd = tmp_path / "img" / "odd.parquet"
    odd.write_bytes((tmp_path / "img" / "photo000.jpg").read_bytes())
    (tmp_path / "odd.jsonl").write_text(json.dumps({"id": "o", "image": "img/odd.parquet"}) + "\n")
    odd_job = EmbeddedRunner(settings).run(JobKind.CAPTION, str(tmp_path / "odd.jsonl")).id
    with pytest.raises(InvalidExport, match=r"odd\.parquet is an input of job"):
        write_export(settings, odd_job, str(odd), ExportOptions("parquet"))


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
    assert all(w["ovis_caption"] == rows[w["id"]] and w["license"] == "cc-by" for w in written)
    assert written[0]["nested"] == {"w": 2}

    # Into a folder, the manifest keeps its file name; a destination of another format is refused.
    into = write_export(settings, report.id, str(tmp_path / "exports") + "/", ExportOptions("manifest"))
    assert into.destination == str(tmp_path / "exports" / "m.jsonl") and into.count == 3
    with pytest.raises(InvalidExport, match=r"names a \.csv file, but the manifest of job"):
        client.export(report.id, str(tmp_path / "out.csv"), "manifest")

    # A record holding a field of that name that ovis-batch did not add: refused, naming the line.
    manifest.write_text(json.dumps({**records[0], "recaption": "mine"}) + "\n")
    with pytest.raises(InvalidExport, match=r"m.jsonl line 1 already has a 'recaption' field"):
        client.export(report.id, str(tmp_path / "out.jsonl"), "manifest", column="recaption")
    assert len(_jsonl(tmp_path / "out.jsonl")) == 3  # the earlier export is left whole


def client_rows(client, job_id: str, tmp_path: Path) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    client.export(job_id, str(tmp_path / "rows.jsonl"))
    return _jsonl(tmp_path / "rows.jsonl")


def test_csv_and_parquet_manifests_keep_their_format_and_columns(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "img", count=3)
    (tmp_path / "m.csv").write_text(
        "id,image,caption\n" + "".join(f"c{i},img/photo{i:03d}.jpg,old {i}\n" for i in range(3))
    )
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(tmp_path / "m.csv"))
    client = EmbeddedRunner(settings).client
    # The manifest's own caption column is kept as it is; ours is added beside it.
    assert client.export(report.id, str(tmp_path / "out.csv"), "manifest") == 3
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["id"], r["caption"]) for r in rows] == [("c0", "old 0"), ("c1", "old 1"), ("c2", "old 2")]
    assert all(r["ovis_caption"].startswith("image ") for r in rows)
    with pytest.raises(InvalidExport, match="already has a 'caption' field, which an export never replaces"):
        client.export(report.id, str(tmp_path / "replaced.csv"), "manifest", column="caption")
    assert not (tmp_path / "replaced.csv").exists()

    # A manifest exported before and submitted again: its ovis_caption column is ours, and is refreshed.
    (tmp_path / "out.csv").rename(tmp_path / "again.csv")
    again = EmbeddedRunner(settings).run(JobKind.CAPTION, str(tmp_path / "again.csv"))
    client.export(again.id, str(tmp_path / "out2.csv"), "manifest")
    with open(tmp_path / "out2.csv", newline="") as handle:
        header = next(csv.reader(handle))
    provenance = ["kind", "prompt", "seed", "max_new_tokens", "temperature", "max_pixels", "model"]
    provenance += ["model_revision", "backend", "version"]
    assert header == ["id", "image", "caption", "ovis_caption", *(f"ovis_{name}" for name in provenance)]

    table = pa.Table.from_pylist(
        [{"key": f"p{i}", "file": f"img/photo{i:03d}.jpg", "w": i, "caption": f"alt {i}"} for i in range(3)]
    )
    pq.write_table(table, tmp_path / "m.parquet")
    (tmp_path / "img" / "photo001.jpg").write_bytes(b"broken")
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(tmp_path / "m.parquet"))
    assert client.export(report.id, str(tmp_path / "out.parquet"), "manifest") == 3
    assert (tmp_path / "out.parquet").is_file()
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(r["key"], r["w"], r["caption"]) for r in out] == [
        ("p0", 0, "alt 0"),
        ("p1", 1, "alt 1"),
        ("p2", 2, "alt 2"),
    ]
    assert out[1]["ovis_caption"] is None and str(out[0]["ovis_caption"]).startswith("image ")


def test_generate_manifest_gets_output_uris(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "fox", "prompt": "a fox"}) + "\n")
    report = EmbeddedRunner(settings).run(JobKind.GENERATE, str(tmp_path / "p.jsonl"))
    client = EmbeddedRunner(settings).client
    client.export(report.id, str(tmp_path / "out.jsonl"), "manifest")
    [row] = _jsonl(tmp_path / "out.jsonl")
    assert row["ovis_output"] == str(tmp_path / "outputs" / report.id / "fox.png")
    assert Path(str(row["ovis_output"])).is_file()


def test_img2dataset_output_gets_per_shard_parquet_without_column(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    wds = tmp_path / "wds"
    keys = write_shard(wds, 0, 4, failed=(3,)) + write_shard(wds, 1, 2)
    # What img2dataset writes beside the shards besides the Parquet: per-shard and overall stats.
    (wds / "00000_stats.json").write_text(json.dumps({"count": 4, "successes": 3}))
    (wds / "_stats.json").write_text(json.dumps({"count": 6}))
    originals = {path.name: path.read_bytes() for path in wds.iterdir()}
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(wds))
    assert report.succeeded == len(keys) == 5

    written = write_export(
        settings, report.id, str(tmp_path / "recaptioned") + "/", ExportOptions("manifest")
    )
    assert (written.count, written.files) == (6, 2)
    assert written.describe() == f"wrote 6 records in 2 files under {tmp_path / 'recaptioned'}"
    shard0 = pq.read_table(tmp_path / "recaptioned" / "00000.parquet").to_pylist()
    assert [r["caption"] for r in shard0] == [f"alt text 00000{i:04d}" for i in range(4)]
    assert [r["status"] for r in shard0] == ["success"] * 3 + ["failed_to_download"]
    assert [r["ovis_caption"] is None for r in shard0] == [False, False, False, True]
    assert str(shard0[0]["ovis_caption"]).startswith("image ")

    client = EmbeddedRunner(settings).client
    with pytest.raises(InvalidExport, match="one Parquet file per shard"):
        client.export(report.id, str(tmp_path / "x.parquet"), "manifest")
    assert not (tmp_path / "x.parquet").exists()
    with pytest.raises(InvalidExport, match="a manifest of the job's shards"):
        client.export(report.id, str(wds), "manifest")
    assert {path.name: path.read_bytes() for path in wds.iterdir()} == originals

    assert client.export(report.id, str(tmp_path / "caps") + "/", "txt") == 5
    assert (tmp_path / "caps" / f"{keys[0]}.txt").read_text().startswith("image ")
    with pytest.raises(InvalidExport, match="inside a tar shard"):
        client.export(report.id, None, "txt")
