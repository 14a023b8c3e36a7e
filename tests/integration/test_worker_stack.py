"""A real `ovis-batch worker` process on Redis, PostgreSQL and moto_server; jobs submitted through the CLI."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image

from tests.helpers import sample_photo
from tests.plugins.workers import Stack, wait_for

pytestmark = pytest.mark.integration


def _upload_photos(stack: Stack, count: int, corrupt: int | None = None) -> None:
    s3 = stack.s3()
    for index in range(count):
        buffer = io.BytesIO()
        sample_photo(("astronaut.png", "chelsea.png", "coffee.png")[index % 3], 96).save(buffer, "JPEG")
        data = buffer.getvalue()
        if index == corrupt:
            data = data[:200]
        s3.put_object(Bucket=stack.bucket, Key=f"inputs/photos/p{index:02d}.jpg", Body=data)


def _status(stack: Stack, job_id: str) -> dict:  # type: ignore[type-arg]
    return json.loads(stack.cli("status", job_id, "--json").stdout)


def _wait_final(stack: Stack, job_id: str, timeout: float = 90) -> dict:  # type: ignore[type-arg]
    wait_for(
        lambda: _status(stack, job_id)["status"] not in ("queued", "running"),
        timeout,
        f"job {job_id} did not finish: {_status(stack, job_id)}",
    )
    return _status(stack, job_id)


def _items(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    sql = "SELECT key, status, output, error_code, attempts FROM items WHERE job_id = :j ORDER BY seq"
    return stack.rows(sql, j=job_id)


def test_three_kinds_through_the_cli(stack: Stack, start_worker) -> None:  # type: ignore[no-untyped-def]
    _upload_photos(stack, 5, corrupt=3)
    s3 = stack.s3()
    edits = "".join(
        json.dumps({"id": f"edit{i}", "image": f"photos/p{i:02d}.jpg", "instruction": "make it red"}) + "\n"
        for i in range(3)
    )
    s3.put_object(Bucket=stack.bucket, Key="inputs/edits.jsonl", Body=edits.encode())
    prompts = stack.home / "prompts.txt"
    prompts.write_text("a lighthouse\na fox in snow\n")
    start_worker()

    caption_id = stack.cli(
        "submit", "caption", "--input", f"s3://{stack.bucket}/inputs/photos"
    ).stdout.split()[-1]
    edit_id = stack.cli(
        "submit", "edit", "--input", f"s3://{stack.bucket}/inputs/edits.jsonl"
    ).stdout.split()[-1]
    generate_id = stack.cli(
        "submit", "generate", "--input", str(prompts), "--width", "128", "--height", "64"
    ).stdout.split()[-1]

    caption = _wait_final(stack, caption_id)
    assert (caption["status"], caption["succeeded"], caption["failed"]) == ("partial", 4, 1)
    assert caption["errors"] == {"invalid_image": 1}
    items = _items(stack, caption_id)
    assert [i["key"] for i in items if i["status"] == "failed"] == ["p03.jpg"]
    assert all(i["output"].startswith("image ") for i in items if i["status"] == "succeeded")
    results = stack.written(f"outputs/{caption_id}/results.jsonl")
    assert len(results.decode().splitlines()) == 5

    for job_id, expected_size in ((edit_id, None), (generate_id, (128, 64))):
        report = _wait_final(stack, job_id)
        assert report["status"] == "succeeded", report
        for item in _items(stack, job_id):
            assert item["status"] == "succeeded" and item["attempts"] == 1
            bucket, key = item["output"].removeprefix("s3://").split("/", 1)
            assert bucket == stack.bucket and key.startswith(f"outputs/{job_id}/")
            image = Image.open(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
            if expected_size is None:  # an edit keeps its input's size
                source = f"inputs/photos/p{int(item['key'][-1]):02d}.jpg"
                expected = Image.open(
                    io.BytesIO(s3.get_object(Bucket=bucket, Key=source)["Body"].read())
                ).size
                assert image.size == expected
            else:
                assert image.size == expected_size
    listed = s3.list_objects_v2(Bucket=stack.bucket, Prefix=f"outputs/{generate_id}/")["Contents"]
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in listed) == ["000001.png", "000002.png", "results.jsonl"]
