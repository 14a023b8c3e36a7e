"""What a submission stores is what the user wrote, and a refused one leaves nothing behind: output keys,
output locations, limits and one-line errors, on PostgreSQL, Redis, moto_server and a real worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.plugins.workers import Stack, WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def _job(stack: Stack, job_id: str) -> dict[str, Any]:
    return json.loads(stack.cli("status", job_id, "--json").stdout)


def _refused(stack: Stack, *args: str) -> str:
    """Run a command that must fail as a user error: exit 2, one line on stderr, no traceback."""
    result = stack.cli(*args, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _objects(stack: Stack, prefix: str = "") -> list[str]:
    listing = stack.s3().list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
    return [entry["Key"] for entry in listing.get("Contents", [])]


def test_ids_that_used_to_share_a_file_get_one_output_each(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    manifest = stack.home / "prompts.jsonl"
    ids = ["a/b", "a__b-3ec69c85", "a%2Fb", ".hidden", "été 2024", "a b"]
    manifest.write_text("".join(json.dumps({"id": i, "prompt": f"render {i}"}) + "\n" for i in ids))
    job_id = stack.cli(
        "submit", "generate", "--input", str(manifest), "--width", "64", "--height", "64"
    ).stdout
    job_id = job_id.split()[-1]
    start_worker()
    wait_for(lambda: _job(stack, job_id)["status"] == "succeeded", 90, "the job did not finish")
    rows = stack.rows("SELECT key, output FROM items WHERE job_id = :j", j=job_id)
    outputs = {row["key"]: row["output"] for row in rows}
    assert set(outputs) == set(ids)
    assert len(set(outputs.values())) == len(ids)  # no two items share an output
    images = [key for key in _objects(stack, f"outputs/{job_id}/") if key.endswith(".png")]
    assert len(images) == len(ids)
    assert f"outputs/{job_id}/a%2Fb.png" in images and f"outputs/{job_id}/a__b-3ec69c85.png" in images


def test_ids_outputs_and_prompts_that_cannot_be_honoured_are_refused_at_submit(stack: Stack) -> None:
    long_id = "x" * 230
    manifest = stack.home / "long.jsonl"
    manifest.write_text(json.dumps({"id": long_id, "prompt": "a red car"}) + "\n")
    assert "too long for an output name" in _refused(stack, "submit", "generate", "--input", str(manifest))

    prompts = stack.home / "prompts.txt"
    prompts.write_text("a red car\n")
    assert "unsupported storage URL" in _refused(
        stack, "submit", "generate", "--input", str(prompts), "--output", "ftp://host/out"
    )
    assert "does not exist" in _refused(
        stack, "submit", "generate", "--input", str(prompts), "--output", "s3://no-such-bucket-here/out"
    )
    assert "not a valid S3 bucket name" in _refused(
        stack, "submit", "generate", "--input", str(prompts), "--output", "s3://Bad_Bucket/out"
    )
    photos = stack.home / "photos"
    photos.mkdir()
    line = _refused(stack, "submit", "caption", "--input", str(photos), "--prompt", "describe " * 5000)
    assert "--prompt has 44999 characters; at most 4000" in line
    assert stack.rows("SELECT id FROM jobs") == []


def test_a_relative_output_is_made_absolute_where_the_producer_stands(stack: Stack, tmp_path: Path) -> None:
    prompts = stack.home / "prompts.txt"
    prompts.write_text("a red car\n")
    here = tmp_path / "producer"
    here.mkdir()
    result = stack.cli("submit", "generate", "--input", str(prompts), "--output", "rel/out", cwd=str(here))
    job_id = result.stdout.split()[-1]
    assert _job(stack, job_id)["output_url"] == str(here / "rel" / "out")


def test_a_source_refused_at_its_last_line_leaves_no_job_no_message_and_no_output(
    stack: Stack, start_worker: Callable[..., WorkerProcess], redis_url: str
) -> None:
    worker = start_worker()
    manifest = stack.home / "prompts.jsonl"
    lines = [json.dumps({"id": f"p{i}", "prompt": f"prompt {i}"}) for i in range(6000)]
    lines.append(json.dumps({"id": "p6000", "prompt": ""}))  # line 6001: an empty prompt
    manifest.write_text("\n".join(lines) + "\n")
    line = _refused(stack, "submit", "generate", "--input", str(manifest))
    assert "line 6001" in line
    assert stack.rows("SELECT id FROM jobs") == [] and stack.rows("SELECT key FROM items") == []
    broker = redis.Redis.from_url(redis_url)
    queue = stack.env["OVIS_BATCH_QUEUE"]
    assert sum(int(broker.llen(key)) for key in broker.scan_iter(f"{queue}*")) == 0  # type: ignore[arg-type]
    assert _objects(stack, "outputs/") == []
    assert "claimed" not in worker.text()


def test_a_database_never_migrated_says_how_to_fix_it(stack: Stack, postgres_url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.env["OVIS_BATCH_DATABASE_URL"])
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE items; DROP TABLE jobs; DROP TABLE alembic_version"))
    engine.dispose()
    assert "run `ovis-batch db upgrade`" in _refused(stack, "list")
    assert "run `ovis-batch db upgrade`" in _refused(stack, "status", "0" * 32)
