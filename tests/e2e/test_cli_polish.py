"""The CLI as a user runs it, on embedded defaults: the version, help on each kind's input, short job ids,
the source in `list`, an export to stdout, and a notification from `run --notify-url`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.version import package_version
from tests.webhook_receiver import receiving

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent / "ovis-batch"


def _cli(home: Path, *args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVIS_BATCH_")}
    env.update(
        OVIS_BATCH_HOME=str(home / "state"),
        OVIS_BATCH_INPUT_ROOTS=str(home),
        OVIS_BATCH_BACKEND="fake",
        COLUMNS="200",
        **extra,
    )
    result = subprocess.run(
        [str(BIN), *args], env=env, cwd=home, capture_output=True, timeout=300, check=False
    )
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout!r}\n{result.stderr!r}"
    return result


def _text(result: subprocess.CompletedProcess[bytes]) -> str:
    return " ".join(result.stdout.decode().split())


@pytest.fixture
def job(tmp_path: Path) -> str:
    """A generate job of two prompts run to its end; its id."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    _cli(tmp_path, "run", "generate", "--input", str(prompts), "--width", "64", "--height", "64")
    (listed,) = [json.loads(line) for line in _cli(tmp_path, "list", "--json").stdout.splitlines()]
    return str(listed["id"])


def test_version(tmp_path: Path) -> None:
    assert _cli(tmp_path, "--version").stdout.decode() == f"ovis-batch {package_version()}\n"


def test_each_kind_says_what_its_input_may_be(tmp_path: Path) -> None:
    caption = _text(_cli(tmp_path, "submit", "caption", "--help"))
    generate = _text(_cli(tmp_path, "submit", "generate", "--help"))
    edit = _text(_cli(tmp_path, "submit", "edit", "--help"))
    assert "WebDataset tar shards" in caption and "s3:// prefix" in caption and "image column" in caption
    assert "one prompt per line" in generate and "prompt column" in generate
    assert "image and an instruction column" in edit
    assert "--notify-url" in caption and "--notify-url" in _text(_cli(tmp_path, "run", "generate", "--help"))


def test_status_takes_the_short_id_and_refuses_a_shorter_one(tmp_path: Path, job: str) -> None:
    shown = json.loads(_cli(tmp_path, "status", job[:8], "--json").stdout)
    assert shown["id"] == job and shown["status"] == "succeeded" and shown["gpu_seconds"] > 0
    assert "GPU time" in _text(_cli(tmp_path, "status", job[:8]))

    short = _cli(tmp_path, "status", job[:7], check=False)
    assert short.returncode == 2 and short.stderr.decode().count("\n") == 1
    assert "at least its first 8 characters" in short.stderr.decode()
    unknown = _cli(tmp_path, "status", "ffffffffff", check=False)
    assert unknown.returncode == 2 and "no job ffffffffff" in unknown.stderr.decode()


def test_list_shows_each_jobs_source(tmp_path: Path, job: str) -> None:
    listed = _text(_cli(tmp_path, "list"))
    # A long source is folded over lines in its column: its end shows whole.
    assert "prompts.txt" in listed and job in listed and "GPU-s" in listed


def test_export_to_stdout(tmp_path: Path, job: str) -> None:
    jsonl = _cli(tmp_path, "export", job[:8], "--out", "-")
    rows = [json.loads(line) for line in jsonl.stdout.decode().splitlines()]
    assert [(row["prompt"], row["status"]) for row in rows] == [
        ("a cat", "succeeded"),
        ("a dog", "succeeded"),
    ]
    assert jsonl.stderr.decode().strip() == "wrote 2 rows to stdout"

    parquet = _cli(tmp_path, "export", job, "--out", "-", "--format", "parquet")
    table = pq.read_table(io.BytesIO(parquet.stdout)).to_pylist()
    assert [row["id"] for row in table] == [row["id"] for row in rows]

    txt = _cli(tmp_path, "export", job, "--out", "-", "--format", "txt", check=False)
    assert txt.returncode == 2 and not txt.stdout and "give --out a folder" in txt.stderr.decode()


def test_run_notifies_the_url_it_was_given_and_submit_refuses_other_schemes(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    with receiving(secret="s3cret") as receiver:
        out = _cli(
            tmp_path,
            "run",
            "generate",
            "--input",
            str(prompts),
            "--notify-url",
            receiver.url,
            OVIS_BATCH_NOTIFY_SECRET="s3cret",
        )
    (post,) = receiver.posts()
    assert post.signed and post.json()["status"] == "succeeded"
    assert "notification: delivered" in _text(out)

    refused = _cli(
        tmp_path, "submit", "generate", "--input", str(prompts), "--notify-url", "ftp://x/y", check=False
    )
    assert refused.returncode == 2 and refused.stderr.decode().count("\n") == 1
    assert "http:// or https://" in refused.stderr.decode()
