"""bench/RESULTS.md, generated from the raw result files in bench/results/.

    python bench/report.py            # writes bench/RESULTS.md
    python bench/report.py --check    # exits 1 when bench/RESULTS.md is not what the files give

One row per result file, grouped by benchmark, each linked to its file. A file is read as its benchmark
wrote it: never changed, never merged with another into one row. Its `errors` and `smoke` fields are quoted
under its benchmark's table; free text a file carries (`note`, `provenance`) is left in the file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
REPORT = BENCH / "RESULTS.md"

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Result:
    """One result file: one run of one benchmark."""

    path: Path
    data: dict[str, Any]

    @property
    def bench(self) -> str:
        """The benchmark's name: its `bench` field, or the file name before its date."""
        name = self.data.get("bench")
        if isinstance(name, str) and name:
            return name
        return _DATE.split(self.path.stem, maxsplit=1)[0].rstrip("-_") or self.path.stem

    @property
    def date(self) -> str:
        """The run's date: its `date` field, or the date in the file name."""
        if isinstance(self.data.get("date"), str):
            return str(self.data["date"])
        found = _DATE.search(self.path.name)
        return found.group(0) if found else "-"

    def get(self, *keys: str) -> Any:
        """The value at a path of keys, or None where the file has none."""
        value: Any = self.data
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value


def load_results(folder: Path = RESULTS) -> list[Result]:
    """Every JSON file of `folder` (logs beside them are not results)."""
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{path}: not a JSON result file: {exc}") from None
        if not isinstance(data, dict):
            raise SystemExit(f"{path}: a result file holds one JSON object, not {type(data).__name__}")
        results.append(Result(path, data))
    return results


# -- columns -------------------------------------------------------------------------------------------------
Getter = Callable[[Result], Any]


def field(*keys: str) -> Getter:
    """The value at a path of keys."""
    return lambda result: result.get(*keys)


def task_field(task: str, *keys: str) -> Getter:
    """A task's figure: under `tasks` in gpu_throughput files from 2026-12-07 on, at the top level before."""

    def get(result: Result) -> Any:
        value = result.get("tasks", task, *keys)
        return value if value is not None else result.get(task, *keys)

    return get


def _targets_met(result: Result) -> str | None:
    verdicts = [value for value in (result.get("targets") or {}).values() if isinstance(value, bool)]
    return f"{sum(verdicts)} of {len(verdicts)}" if verdicts else None


def _peak_memory(result: Result) -> str:
    sections = ("fast_paths", "official_paths")
    return " / ".join(text(result.get(section, "peak_gpu_mem_mb")) for section in sections)


def _timings(section: str) -> Getter:
    names = ("caption_batch1", "caption_batch4", "generate", "edit")
    return lambda result: " / ".join(text(result.get(section, "timings_s", name)) for name in names)


#: Columns of the benchmarks whose files nest their figures; any other benchmark shows its top-level values.
COLUMNS: dict[str, list[tuple[str, Getter]]] = {
    "gpu_throughput": [
        ("GPU", lambda result: result.get("machine", "gpu") or result.get("environment", "gpu")),
        ("backend", field("backend")),
        ("cold start s", field("cold_start_s")),
        ("cold start, compile cache kept s", field("cold_start_cached_s")),
        ("caption system items/s", task_field("caption", "system_items_per_s")),
        ("caption model items/s", task_field("caption", "model_items_per_s")),
        ("caption model items/s, max 448x448 px", task_field("caption", "model_items_per_s_max_pixels_448")),
        ("caption batch-1 items/s", task_field("caption", "batch1_items_per_s")),
        ("generate system s/image", task_field("generate", "system", "s_per_item")),
        ("generate model s/image", task_field("generate", "model_s_per_item")),
        ("edit system s/edit", task_field("edit", "system", "s_per_item")),
        ("edit model s/edit", task_field("edit", "model_s_per_item")),
        ("caption items/s, 2 workers", task_field("caption", "system_items_per_s_2_workers")),
        ("targets met", _targets_met),
    ],
    "ovis_u1_standin_gpu": [
        ("device", field("fast_paths", "device_name")),
        ("fast paths: caption b1 / b4, generate, edit (s)", _timings("fast_paths")),
        ("official paths: caption b1 / b4, generate, edit (s)", _timings("official_paths")),
        ("peak GPU MB (fast / official)", _peak_memory),
    ],
}

#: Top-level fields that say what a file is rather than what it measured: quoted under the table.
NOTE_FIELDS = ("errors", "smoke")
#: Free text a file may carry: neither a column nor quoted.
TEXT_FIELDS = ("note", "provenance")
#: Longer text than this goes under the table, not in a cell.
CELL_CHARS = 60


def scalar_columns(results: Sequence[Result]) -> list[tuple[str, Getter]]:
    """The top-level numbers and short texts of a benchmark's files, in the order they first appear."""
    names: list[str] = []
    for result in results:
        for name, value in result.data.items():
            short = not isinstance(value, str) or len(value) <= CELL_CHARS
            plain = not isinstance(value, dict | list)
            quoted = ("bench", "date", *NOTE_FIELDS, *TEXT_FIELDS)
            if plain and short and name not in quoted and name not in names:
                names.append(name)
    return [(name, field(name)) for name in names]


# -- rendering -----------------------------------------------------------------------------------------------
def text(value: Any) -> str:
    """A value as a table cell shows it: as the file wrote it, `-` where it has none."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | int | str):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def cell(value: Any) -> str:
    """A Markdown table cell."""
    return (value if isinstance(value, str) else text(value)).replace("|", "\\|").replace("\n", " ")


def notes(result: Result) -> list[str]:
    """What a file says about itself, quoted."""
    lines = []
    for name in NOTE_FIELDS:
        value = result.data.get(name)
        if value in (None, {}, [], False, ""):
            continue
        if isinstance(value, dict):
            for key, inner in value.items():
                items = inner if isinstance(inner, list) else [inner]
                lines += [f"{name}.{key}: {item if isinstance(item, str) else text(item)}" for item in items]
        elif isinstance(value, list):
            lines += [f"{name}: {item if isinstance(item, str) else text(item)}" for item in value]
        else:
            lines.append(f"{name}: {text(value)}")
    for name, value in result.data.items():
        if isinstance(value, str) and len(value) > CELL_CHARS and name not in (*NOTE_FIELDS, *TEXT_FIELDS):
            lines.append(f"{name}: {value}")
    return lines


def link(result: Result, base: Path) -> str:
    """The file's name, linked relative to the folder of the report."""
    return f"[{result.path.name}]({Path(os.path.relpath(result.path, base)).as_posix()})"


def benchmark_section(name: str, results: Sequence[Result], base: Path) -> list[str]:
    """One benchmark: a row per file, then what the files say about themselves."""
    ordered = sorted(results, key=lambda result: (result.date, result.path.name))
    columns = COLUMNS.get(name) or scalar_columns(ordered)
    lines = [f"## {name}", "", f"{len(ordered)} result file{'s' if len(ordered) != 1 else ''}.", ""]
    headers = ["run", "date", *[header for header, _ in columns]]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + " --- |" * len(headers))
    for result in ordered:
        cells = [link(result, base), result.date, *[cell(getter(result)) for _, getter in columns]]
        lines.append("| " + " | ".join(cells) + " |")
    annotated = [(result, notes(result)) for result in ordered]
    if any(quoted for _, quoted in annotated):
        lines += ["", "What each file says about itself:", ""]
        for result, quoted in annotated:
            if quoted:
                lines.append(f"- {link(result, base)}")
                lines += [f"  - {cell(line)}" for line in quoted]
    return [*lines, ""]


def render(results: Sequence[Result], base: Path = REPORT.parent) -> str:
    """RESULTS.md for these result files, its links relative to `base`."""
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python bench/report.py` from the files in `bench/results/`: do not edit by hand, run",
        "it again. One row per result file as its benchmark wrote it; `bench/README.md` explains the fields.",
        "",
    ]
    by_bench: dict[str, list[Result]] = {}
    for result in results:
        by_bench.setdefault(result.bench, []).append(result)
    if not by_bench:
        lines += ["No result files yet.", ""]
    for name in sorted(by_bench):
        lines += benchmark_section(name, by_bench[name], base)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write RESULTS.md, or with --check say whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if RESULTS.md is out of date")
    args = parser.parse_args(argv)
    report = render(load_results())
    if args.check:
        current = REPORT.read_text(encoding="utf-8") if REPORT.exists() else ""
        if current != report:
            print(f"{REPORT} is out of date: run python bench/report.py", file=sys.stderr)
            return 1
        return 0
    REPORT.write_text(report, encoding="utf-8")
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
