"""`export --presign`: what it is refused for, and local outputs, which get no link (S3: integration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.api import Client
from jobs.errors import InvalidParameters
from jobs.export import ExportOptions, write_export
from jobs.lifecycle import JobKind
from storage import MAX_PRESIGN_SECONDS, LocalStore, presign_url
from tests.helpers import embedded_settings, write_photos
from workers.embedded import EmbeddedRunner


def test_a_local_file_has_no_link_and_a_link_lives_at_most_seven_days(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    path = store.write("a/b.png", b"x")
    assert store.presign("a/b.png", 60) is None
    assert presign_url(path, MAX_PRESIGN_SECONDS) is None
    for seconds in (0, MAX_PRESIGN_SECONDS + 1):
        with pytest.raises(ValueError, match="1 to 604800 seconds"):
            store.presign("a/b.png", seconds)


def test_local_outputs_get_an_empty_link_column(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    (tmp_path / "p.txt").write_text("a fox\n")
    report = EmbeddedRunner(settings).run(JobKind.GENERATE, str(tmp_path / "p.txt"))
    out = tmp_path / "rows.jsonl"
    write_export(settings, report.id, str(out), ExportOptions("jsonl", presign=3600))
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["output_https"] is None and Path(row["output"]).is_file()
    # The Python API offers the same option.
    by_api = tmp_path / "api.jsonl"
    assert Client(settings).export(report.id, str(by_api), "jsonl", presign=3600) == 1
    assert json.loads(by_api.read_text())["output_https"] is None


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"fmt": "txt", "presign": 60}, "--presign adds a column"),
        ({"fmt": "jsonl", "presign": 0}, "a link lives 1 to 604800 seconds"),
        ({"fmt": "parquet", "presign": 604801}, "a link lives 1 to 604800 seconds"),
    ],
)
def test_presign_options_are_checked(options: dict[str, object], refusal: str) -> None:
    with pytest.raises(InvalidParameters, match=refusal):
        ExportOptions(**options)  # type: ignore[arg-type]


def test_a_caption_job_has_no_image_to_link(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "in", count=1)
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(tmp_path / "in"))
    with pytest.raises(InvalidParameters, match="--presign links image outputs"):
        write_export(settings, report.id, str(tmp_path / "rows.jsonl"), ExportOptions("jsonl", presign=60))
    assert not (tmp_path / "rows.jsonl").exists()
