"""Outputs users can ship, on a real worker, PostgreSQL and moto_server: JPEG and WebP outputs with their
Content-Type, the provenance in each file read back with README's reader and the same in the rows, and
presigned links that fetch the objects with a plain HTTP GET."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from storage import S3Options, S3Store, presign_url
from tests.helpers import sample_photo
from tests.plugins.workers import Stack, wait_for
from tests.provenance_helpers import as_embedded, readme_reader

pytestmark = pytest.mark.integration


def test_a_presigned_link_fetches_the_object_with_a_plain_get(s3_options: S3Options, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, "outputs", s3_options)
    url = store.write("job/a b+c.png", b"\x89PNG pixels", "image/png")
    link = store.presign("job/a b+c.png", 300)
    assert link.startswith(f"{s3_options.endpoint_url}/") and "X-Amz-Expires=300" in link
    answer = requests.get(link, timeout=30)
    assert (answer.status_code, answer.content) == (200, b"\x89PNG pixels")
    assert answer.headers["Content-Type"] == "image/png"
    assert presign_url(url, 300, s3_options) is not None


def _submit(stack: Stack, *args: str) -> str:
    return stack.cli("submit", *args).stdout.split()[-1]


def _status(stack: Stack, job_id: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(stack.cli("status", job_id, "--json").stdout)
    return report


def _wait_succeeded(stack: Stack, job_id: str) -> None:
    wait_for(
        lambda: _status(stack, job_id)["status"] not in ("queued", "running"),
        90,
        f"job {job_id} did not finish: {_status(stack, job_id)}",
    )
    report = _status(stack, job_id)
    assert report["status"] == "succeeded", report


def _download(stack: Stack, url: str, folder: Path) -> tuple[Path, str]:
    """The object at `url` as a local file, and the Content-Type it is stored with."""
    bucket, key = url.removeprefix("s3://").split("/", 1)
    answer = stack.s3().get_object(Bucket=bucket, Key=key)
    path = folder / key.rsplit("/", 1)[1]
    path.write_bytes(answer["Body"].read())
    return path, answer["ContentType"]


def test_jpeg_and_webp_outputs_carry_their_provenance_and_links_fetch_them(  # type: ignore[no-untyped-def]
    stack: Stack, start_worker, tmp_path: Path
) -> None:
    s3 = stack.s3()
    for index in range(2):
        buffer = io.BytesIO()
        sample_photo(("astronaut.png", "coffee.png")[index], 80).save(buffer, "JPEG")
        s3.put_object(Bucket=stack.bucket, Key=f"inputs/photos/p{index}.jpg", Body=buffer.getvalue())
    edits = "".join(
        json.dumps({"id": f"e{i}", "image": f"photos/p{i}.jpg", "instruction": f'make it "red" #{i}'}) + "\n"
        for i in range(2)
    )
    s3.put_object(Bucket=stack.bucket, Key="inputs/edits.jsonl", Body=edits.encode())
    prompts = stack.home / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\na fox in snow\n")
    start_worker()

    generate_id = _submit(
        stack,
        "generate",
        "--input",
        str(prompts),
        "--width",
        "96",
        "--height",
        "64",
        "--image-format",
        "jpeg",
    )
    edit_id = _submit(
        stack,
        "edit",
        "--input",
        f"s3://{stack.bucket}/inputs/edits.jsonl",
        "--image-format",
        "webp",
        "--quality",
        "75",
        "--img-cfg",
        "2.0",
    )
    read = readme_reader()
    for job_id, ext, content_type, pillow in (
        (generate_id, ".jpg", "image/jpeg", "JPEG"),
        (edit_id, ".webp", "image/webp", "WEBP"),
    ):
        _wait_succeeded(stack, job_id)
        items = stack.rows(
            "SELECT key, output, provenance FROM items WHERE job_id = :j ORDER BY seq", j=job_id
        )
        assert len(items) == 2
        for item in items:
            made = item["provenance"]
            assert item["output"].endswith(ext)
            path, stored_as = _download(stack, item["output"], tmp_path)
            assert stored_as == content_type
            with Image.open(path) as image:
                assert image.format == pillow and (made["width"], made["height"]) == image.size
            assert read(path) == as_embedded(made)
            assert made["backend"] == "fake" and isinstance(made["seed"], int)

        # results.jsonl, written by the worker when the job ended, holds the same provenance in its rows.
        results = stack.written(f"outputs/{job_id}/results.jsonl")
        rows = {row["id"]: row for row in map(json.loads, results.decode().splitlines())}
        for item in items:
            assert {name: rows[item["key"]].get(name) for name in item["provenance"]} == item["provenance"]

        # export --presign: each link fetches its output with a plain GET, no credentials.
        out = tmp_path / f"{job_id}.jsonl"
        stack.cli("export", job_id, "--out", str(out), "--presign", "3600")
        exported = [json.loads(line) for line in out.read_text().splitlines()]
        for row in exported:
            answer = requests.get(row["output_https"], timeout=30)
            assert answer.status_code == 200
            assert answer.content == _download(stack, row["output"], tmp_path)[0].read_bytes()

    edits_made = stack.rows("SELECT provenance FROM items WHERE job_id = :j ORDER BY seq", j=edit_id)
    first = edits_made[0]["provenance"]
    assert (first["kind"], first["prompt"], first["img_cfg"], first["quality"]) == (
        "edit",
        'make it "red" #0',
        2.0,
        75,
    )
