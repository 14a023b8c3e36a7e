"""A benchmark run leaves its own raw file, named for the run, with where and how it ran; never replaced."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from bench.raw_result import write_result


def test_each_run_writes_a_file_of_its_own_with_its_metadata(tmp_path: Path) -> None:
    machine = {"gpu": "H200"}
    path = write_result("submit_scale", {"submit_s": 1.5}, folder=tmp_path, tag="box 1", machine=machine)
    data = json.loads(path.read_text())
    assert path.name.startswith("submit_scale-") and path.name.endswith("-box-1.json")
    assert data["bench"] == "submit_scale" and data["submit_s"] == 1.5
    assert {"date", "git_sha", "machine", "versions", "command"} <= set(data)
    assert data["machine"]["gpu"] == "H200" and data["versions"]["python"]


def test_a_run_never_replaces_another_runs_file(tmp_path: Path) -> None:
    when = dt.datetime(2026, 12, 7, 22, 0, 0, tzinfo=dt.UTC)
    first = write_result("b", {"n": 1}, folder=tmp_path, tag="t", when=when)
    with pytest.raises(FileExistsError):
        write_result("b", {"n": 2}, folder=tmp_path, tag="t", when=when)
    assert json.loads(first.read_text())["n"] == 1
