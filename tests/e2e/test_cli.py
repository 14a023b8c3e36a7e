"""The CLI as a user runs it, on embedded defaults (SQLite, local folders), in fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers import write_photos

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent / "ovis-batch"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVIS_BATCH_")}
    env.update(OVIS_BATCH_HOME=str(home / "state"), OVIS_BATCH_INPUT_ROOTS=str(home), **extra)
    return env


def _cli(home: Path, *args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN), *args],
        env=_env(home, **extra),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def test_run_caption_on_the_tiny_model_then_status_list_export(tmp_path: Path) -> None:
    write_photos(tmp_path / "photos", count=3)
    out = _cli(tmp_path, "run", "caption", "--input", str(tmp_path / "photos"), "--max-new-tokens", "8")
    assert "succeeded" in out.stdout
    listed = [json.loads(line) for line in _cli(tmp_path, "list", "--json").stdout.splitlines()]
    assert [(job["kind"], job["status"]) for job in listed] == [("caption", "succeeded")]
    job_id = listed[0]["id"]
    status = json.loads(_cli(tmp_path, "status", job_id, "--json").stdout)
    assert (status["status"], status["succeeded"], status["total"]) == ("succeeded", 3, 3)
    _cli(tmp_path, "export", job_id, "--out", str(tmp_path / "captions.parquet"))
    table = pq.read_table(tmp_path / "captions.parquet").to_pylist()
    assert [row["id"] for row in table] == ["photo000.jpg", "photo001.jpg", "photo002.jpg"]
    assert all(row["status"] == "succeeded" and row["output"] is not None for row in table)


def test_run_caption_under_a_pixel_cap_records_it_with_every_caption(tmp_path: Path) -> None:
    write_photos(tmp_path / "img", count=2)
    manifest = tmp_path / "photos.csv"
    manifest.write_text("id,image,max_pixels\njob,img/photo000.jpg,\nown,img/photo001.jpg,802816\n")
    args = ("run", "caption", "--input", str(manifest), "--max-new-tokens", "4")
    out = _cli(tmp_path, *args, "--max-pixels", "401408")
    assert "(2 succeeded, 0 failed" in out.stdout
    [job] = [json.loads(line) for line in _cli(tmp_path, "list", "--json").stdout.splitlines()]
    _cli(tmp_path, "export", job["id"], "--out", str(tmp_path / "captions.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert {row["id"]: row["max_pixels"] for row in rows} == {"job": 401408, "own": 802816}
    refused = _cli(tmp_path, *args, "--max-pixels", "1000", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "max_pixels" in refused.stderr and "200704..3211264" in refused.stderr


def test_run_generate_writes_png_files(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    _cli(tmp_path, "run", "generate", "--input", str(prompts), "--width", "96", "--height", "64")
    images = sorted((tmp_path / "state" / "outputs").rglob("*.png"))
    assert [p.name for p in images] == ["000001.png", "000002.png"]
    assert Image.open(images[0]).size == (96, 64)


def test_invalid_parameters_are_refused_with_what_is_allowed(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    result = _cli(tmp_path, "run", "generate", "--input", str(prompts), "--steps", "-3", check=False)
    assert result.returncode == 2
    assert "steps" in result.stderr and "greater than or equal to 1" in result.stderr


def test_worker_without_ovis_u1_weights_fails_at_start_with_the_fix(tmp_path: Path) -> None:
    result = _cli(
        tmp_path,
        "worker",
        "--gpus",
        "none",
        check=False,
        OVIS_BATCH_BACKEND="ovis-u1",
        OVIS_BATCH_MODEL_PATH=str(tmp_path / "models" / "Ovis-U1-3B"),
    )
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "Ovis-U1" in message and str(tmp_path / "models" / "Ovis-U1-3B") in message
    assert "does not exist" in message
    assert "huggingface-cli download AIDC-AI/Ovis-U1-3B" in message


def test_run_without_ovis_u1_weights_fails_with_the_fix_not_a_traceback(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    result = _cli(
        tmp_path,
        "run",
        "generate",
        "--input",
        str(prompts),
        check=False,
        OVIS_BATCH_BACKEND="ovis-u1",
        OVIS_BATCH_MODEL_PATH=str(tmp_path / "models" / "Ovis-U1-3B"),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")
    assert "huggingface-cli download AIDC-AI/Ovis-U1-3B" in " ".join(result.stderr.split())


def test_bad_input_to_submit_is_one_line_and_exit_2(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "prompt": "a cat"}\n{"id": "b\\u0000", "prompt": "a dog"}\n')
    result = _cli(tmp_path, "run", "generate", "--input", str(manifest), check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "line 2" in result.stderr and "NUL" in result.stderr
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    result = _cli(tmp_path, "run", "generate", "--input", str(prompts), "--output", "ftp://h/x", check=False)
    assert (
        result.returncode == 2
        and result.stderr.startswith("error: --output")
        and "Traceback" not in result.stderr
    )


COMMANDS = [
    "submit",
    "run",
    "db",
    "status",
    "list",
    "export",
    "cancel",
    "resume",
    "retry",
    "worker",
    "ping",
    "reconcile",
    "flower",
    "metrics",
    "demo",
    "serve",
    "token",
]


def _commands(usage: str) -> list[str]:
    """The commands a --help lists, in its order (its options left out)."""
    rows = [line.split() for line in usage.splitlines() if line.startswith("│ ")]
    return [row[1] for row in rows if len(row) > 2 and not row[1].startswith("-")]


def test_one_console_script_lists_the_producer_and_the_worker_commands(tmp_path: Path) -> None:
    listed = _commands(_cli(tmp_path, "--help", COLUMNS="200").stdout)
    assert set(COMMANDS) <= set(listed)
    # The GPU launcher starts its children as `python -m workers.cli`: the same script.
    module = subprocess.run(
        [sys.executable, "-m", "workers.cli", "--help"],
        env=_env(tmp_path, COLUMNS="200"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert _commands(module.stdout) == listed
    for group, kinds in (
        ("submit", "caption generate edit"),
        ("run", "caption generate edit"),
        ("db", "upgrade downgrade"),
        ("token", "new"),
    ):
        assert _commands(_cli(tmp_path, group, "--help", COLUMNS="200").stdout) == kinds.split()


def test_a_missing_manifest_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = _cli(tmp_path, "submit", "caption", "--input", str(tmp_path / "missing.jsonl"), check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "missing.jsonl does not exist" in result.stderr
