"""bench/gpu_throughput.py writes one raw file per run, named for its time and GPU, never another run's, and
says in it where and how it ran (bench/gpu_results.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import raw_result
from tests.bench_scripts import BENCH, ROOT, load_bench_script

results_module = load_bench_script("gpu_results")
DATE = "2026-12-07T21:05:09Z"


def test_a_run_file_is_named_for_its_time_and_gpu() -> None:
    assert results_module.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert results_module.slug("") == "unknown"


def test_runs_in_the_same_second_get_files_of_their_own(tmp_path: Path) -> None:
    first = results_module.RunFile(tmp_path, DATE, "NVIDIA H200")
    second = results_module.RunFile(tmp_path, DATE, "NVIDIA H200")
    first.write({"run": 1})
    second.write({"run": 2})

    assert first.path.name == "gpu_throughput-20261207T210509Z-nvidia-h200.json"
    assert second.path.name == "gpu_throughput-20261207T210509Z-nvidia-h200-2.json"
    assert json.loads(first.path.read_text()) == {"run": 1}
    assert json.loads(second.path.read_text()) == {"run": 2}
    assert {path.name for path in tmp_path.iterdir()} == {first.path.name, second.path.name}


def test_a_file_that_exists_is_never_written(tmp_path: Path) -> None:
    taken = tmp_path / "gpu_throughput-20261207T210509Z-cpu.json"
    taken.write_text('{"an": "earlier run"}\n')

    run = results_module.RunFile(tmp_path, DATE, None)
    run.write({"a": "later run"})

    assert taken.read_text() == '{"an": "earlier run"}\n'
    assert run.path != taken


def test_without_git_the_commit_given_on_the_command_line_is_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(raw_result, "_git_sha", lambda: None)  # a copy of the working tree, no .git

    given = results_module.provenance("abc123")
    absent = results_module.provenance(None)

    assert (given["git_sha"], given["git_sha_from"]) == ("abc123", "--git-sha")
    assert absent["git_sha"] is None and "git_sha_from" not in absent


def test_the_commit_given_wins_over_a_stale_git_in_the_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy on a GPU host may carry the .git of an older commit: the given commit is recorded, what the
    local .git said is kept beside it, and dirtiness against that .git is not claimed."""
    monkeypatch.setattr(raw_result, "_git_sha", lambda: "686dc443f293f553d60adaeea73913343728b9cb")
    monkeypatch.setattr(raw_result, "_dirty", lambda: True)

    meta = results_module.provenance("e1d8ca8")
    same = results_module.provenance("686dc44")

    assert (meta["git_sha"], meta["git_dirty"]) == ("e1d8ca8", None)
    assert meta["local_git"] == {"git_sha": "686dc443f293f553d60adaeea73913343728b9cb", "git_dirty": True}
    assert (same["git_sha"], same["git_dirty"]) == ("686dc44", True) and "local_git" not in same


def test_in_the_checkout_the_commit_is_read_from_git() -> None:
    meta = results_module.provenance(None)

    assert len(meta["git_sha"]) == 40 and "git_sha_from" not in meta and isinstance(meta["git_dirty"], bool)
    assert meta["bench"] == "gpu_throughput" and "gpu" in meta["machine"]
    assert {"python", "torch", "transformers", "diffusers", "tokenizers", "numpy"} <= set(meta["versions"])


def _digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_a_smoke_run_writes_its_own_file_with_its_provenance_and_leaves_the_others(tmp_path: Path) -> None:
    earlier = tmp_path / "gpu_throughput-20261201T000000Z-cpu.json"
    earlier.write_text('{"bench": "gpu_throughput", "smoke": true}\n')
    before = _digests(tmp_path)
    command = [sys.executable, str(BENCH / "gpu_throughput.py"), "--smoke", "--parts", "official"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    done = subprocess.run(
        [*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env, check=False
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert {name: _digests(tmp_path)[name] for name in before} == before
    (written,) = [path for path in tmp_path.glob("*.json") if path != earlier]
    assert written.name.startswith("gpu_throughput-") and written.name.endswith("-cpu.json")
    result = json.loads(written.read_text())
    assert result == json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bench"] == "gpu_throughput" and result["backend"] == "ovis-u1-shaped" and result["smoke"]
    assert len(result["git_sha"]) == 40 and result["command"].endswith(
        "--parts official --out " + str(tmp_path)
    )
    assert {"host", "cpus", "gpu"} <= set(result["machine"]) and result["machine"]["gpu"] is None
    assert {"python", "torch", "transformers", "diffusers"} <= set(result["versions"])
    assert result["errors"] == {}
    assert result["tasks"]["caption"]["batch1_items_per_s"] > 0
