"""README's Python API example, run as written against a worker on the embedded defaults (SQLite, the
folder broker, local outputs): the code block is taken from README and executed in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import write_photos
from tests.plugins.workers import WorkerProcess

pytestmark = pytest.mark.e2e
README = Path(__file__).resolve().parents[2] / "README.md"


def python_api_example() -> str:
    """The first Python code block of README's "Python API" section."""
    section = README.read_text().split("\n### Python API\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README's Python API section has no python code block"
    return match.group(1)


def test_the_readme_example_submits_waits_and_reads_the_results(
    tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    write_photos(tmp_path / "photos", count=3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVIS_BATCH_")}
    env.update(
        OVIS_BATCH_HOME=str(tmp_path / "state"),
        OVIS_BATCH_INPUT_ROOTS=str(tmp_path),
        OVIS_BATCH_BACKEND="fake",
        OVIS_BATCH_RECONCILE_INTERVAL_S="0",
        PYTHONUNBUFFERED="1",
    )
    spawn_worker("--gpus", "none", env=env)

    run = subprocess.run(
        [sys.executable, "-c", python_api_example()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    summary, *rows = run.stdout.splitlines()
    status, succeeded, failed, results, gpu_seconds = summary.split()
    assert (status, succeeded, failed) == ("succeeded", "3", "0")
    assert Path(results).name == "results.jsonl" and Path(results).is_file()
    assert float(gpu_seconds) > 0
    assert [row.split()[:2] for row in rows] == [[f"photo00{n}.jpg", "succeeded"] for n in range(3)]
