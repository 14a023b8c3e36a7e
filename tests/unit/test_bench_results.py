"""bench/RESULTS.md is what bench/report.py makes of the raw result files: a row per file, files untouched."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_report_module() -> ModuleType:
    """bench/report.py (bench is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


report = load_report_module()


def digests(folder: Path) -> dict[str, str]:
    """Name -> SHA-256 of every file in `folder`."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def table_rows(text: str) -> list[str]:
    """The data rows of every table (header and separator left out)."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [line for line in lines if not line.startswith(("| run |", "| --- |"))]


def test_results_md_is_up_to_date_with_the_result_files() -> None:
    regenerated = report.render(report.load_results())

    assert (BENCH / "RESULTS.md").read_text(encoding="utf-8") == regenerated, (
        "bench/RESULTS.md is out of date: run python bench/report.py and commit it"
    )


def test_every_result_file_has_exactly_one_row_linking_it() -> None:
    rows = table_rows((BENCH / "RESULTS.md").read_text(encoding="utf-8"))
    files = sorted(path.name for path in (BENCH / "results").glob("*.json"))

    assert files
    assert len(rows) == len(files)
    for name in files:
        assert sum(f"](results/{name})" in row for row in rows) == 1, f"{name} is not on exactly one row"


def test_runs_of_one_benchmark_stay_separate_rows_and_files_stay_as_written(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    run = {"items": 1000000, "submit_s": 11.82, "peak_rss_mb": 111.5, "cpus": 2}
    (results / "submit_scale-2026-12-07.json").write_text(json.dumps(run))
    (results / "submit_scale-2026-12-06.json").write_text(json.dumps({**run, "submit_s": 7.15}))
    (results / "gpu-smoke.json").write_text(json.dumps({"bench": "gpu_throughput", "smoke": True}))
    (results / "worker.log").write_text("not a result\n")
    before = digests(results)

    text = report.render(report.load_results(results), base=tmp_path)

    assert digests(results) == before
    rows = table_rows(text)
    assert len(rows) == 3
    assert text.index("## gpu_throughput") < text.index("## submit_scale")
    scale = [row for row in rows if "submit_scale" in row]
    assert scale == [
        f"| [{name}](results/{name}) | {date} | 1000000 | {seconds} | 111.5 | 2 |"
        for name, date, seconds in [
            ("submit_scale-2026-12-06.json", "2026-12-06", 7.15),
            ("submit_scale-2026-12-07.json", "2026-12-07", 11.82),
        ]
    ]
    assert "| run | date | items | submit_s | peak_rss_mb | cpus |" in text
    assert "  - smoke: yes" in text


def test_a_file_that_is_not_json_stops_the_report(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{ not json")

    with pytest.raises(SystemExit, match=r"broken\.json"):
        report.load_results(tmp_path)
