"""One rule for `--out`, and the `export` command's refusals: exit status 2 and one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from jobs import cli
from jobs.errors import InvalidExport
from jobs.export_destination import file_target, format_of, parse_destination
from tests.export_helpers import captioned_job
from tests.helpers import embedded_settings


def test_the_out_rule_for_local_paths_and_s3(tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    cases = {
        f"{tmp_path}/new/": (str(tmp_path / "new"), True),
        str(tmp_path / "existing"): (str(tmp_path / "existing"), True),
        str(tmp_path / "new"): (str(tmp_path / "new"), False),
        str(tmp_path / "x.parquet"): (str(tmp_path / "x.parquet"), False),
        f"file://{tmp_path}/dir/": (str(tmp_path / "dir"), True),
        "s3://b/exports/": ("s3://b/exports", True),
        "s3://b/exports": ("s3://b/exports", False),
        "s3://b/exports/x.jsonl": ("s3://b/exports/x.jsonl", False),
        "s3://b": ("s3://b", True),
        "s3://b/": ("s3://b", True),
    }
    for out, expected in cases.items():
        destination = parse_destination(out)
        assert (destination.url, destination.is_folder) == expected, out
    with pytest.raises(InvalidExport, match="--out: unsupported storage URL"):
        parse_destination("http://example.com/x.jsonl")


@given(name=st.text(alphabet=st.sampled_from(["a", "é", ".", "-", " ", "/"]), min_size=1, max_size=16))
def test_a_trailing_slash_makes_a_folder_and_its_absence_a_file(name: str) -> None:
    for base in ("s3://bucket/", "/nonexistent-ovis-batch-root/"):
        assert parse_destination(f"{base}{name.strip('/')}/").is_folder
    key = "/".join(part for part in name.split("/") if part not in ("", ".", ".."))
    if key:
        assert not parse_destination(f"s3://bucket/{key}").is_folder
        assert not parse_destination(f"/nonexistent-ovis-batch-root/{key}").is_folder


def test_one_file_targets_and_the_format_a_destination_names() -> None:
    folder = parse_destination("s3://b/exports/")
    assert file_target(folder, ext=".jsonl", default_name="J.jsonl", what="x") == "s3://b/exports/J.jsonl"
    assert file_target(parse_destination("s3://b/r.JSONL"), ext=".jsonl", default_name="J", what="x") == (
        "s3://b/r.JSONL"
    )
    with pytest.raises(InvalidExport, match=r"names a \.csv file, but a jsonl export is a \.jsonl file"):
        file_target(
            parse_destination("s3://b/captions.csv"), ext=".jsonl", default_name="J", what="a jsonl export"
        )
    assert format_of("/x/rows.jsonl") == "jsonl" and format_of("s3://b/rows.parquet") == "parquet"
    for out in (None, "/x/captions.csv", "/x/out/", "s3://b/exports/", "/x/rows"):
        with pytest.raises(InvalidExport, match="give --format"):
            format_of(out)


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    settings = embedded_settings(tmp_path)
    monkeypatch.setattr(cli, "get_settings", lambda: settings)
    monkeypatch.chdir(tmp_path)
    return captioned_job(
        settings, [(f"p{n}.jpg", str(tmp_path / "in" / f"p{n}.jpg"), n < 2) for n in range(3)]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "captions.csv"], "--out captions.csv does not name a format: give --format"),
        ([], "give --format: txt writes a caption file beside each image"),
        (["--out", "out/"], "--out out/ does not name a format"),
        (["-f", "jsonl", "--out", "captions.csv"], "names a .csv file, but a jsonl export is a .jsonl file"),
        (["-f", "parquet"], "the parquet export needs --out"),
        (["-f", "txt", "--out", "captions.txt"], "names a file, but caption files are one per item"),
        (["-f", "manifest", "--out", "m.jsonl"], "which is no manifest"),
        (["-f", "csv", "--out", "x.csv"], "unknown export format 'csv'"),
        (["-f", "jsonl", "--out", "x.jsonl", "--status", "done"], "unknown item state 'done'"),
    ],
)
def test_bad_out_and_format_combinations_exit_2_with_one_line(
    job: str, tmp_path: Path, args: list[str], message: str
) -> None:
    before = sorted(tmp_path.iterdir())
    result = CliRunner().invoke(cli.app, ["export", job, *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and message in line
    assert sorted(tmp_path.iterdir()) == before


def test_the_command_reports_what_it_wrote_where(job: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["export", job, "--out", "rows.jsonl"])
    assert (result.exit_code, result.stdout) == (0, f"wrote 3 rows to {tmp_path / 'rows.jsonl'}\n")
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 3
    result = CliRunner().invoke(cli.app, ["export", job, "-f", "txt", "--out", "captions/"])
    assert result.stdout == f"wrote 2 caption files under {tmp_path / 'captions'}\n"
    assert (
        json.dumps(sorted(path.name for path in (tmp_path / "captions").iterdir())) == '["p0.txt", "p1.txt"]'
    )
