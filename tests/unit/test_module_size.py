"""Modules stay small enough to read: none over 500 lines in the project's packages."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "workers", "gpu_model", "storage")
MAX_LINES = 500


def test_no_module_over_500_lines() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert len(sizes) > 40, "the packages were not found"
    assert {path: lines for path, lines in sizes.items() if lines > MAX_LINES} == {}
