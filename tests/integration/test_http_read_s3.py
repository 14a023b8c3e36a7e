"""The read endpoints on PostgreSQL and moto_server with a real worker: a generate job finished by the
torch-free backend, watched, paged and its outputs fetched through the API, as stored and as thumbnails."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from jobs.http.app import create_app
from jobs.settings import Settings
from tests.plugins.workers import Stack, wait_for

pytestmark = pytest.mark.integration

SHOTS = [
    {"id": "shots/a lighthouse", "prompt": "a lighthouse at dusk"},
    {"id": "fox", "prompt": "a fox in snow"},
    {"id": "boat", "prompt": "a red boat"},
]


class NoChunks:
    """Reads send nothing: a dispatcher that refuses to is enough."""

    def send_chunk(self, *_: Any) -> None:
        """Refuse: the read endpoints never dispatch."""
        raise AssertionError("a read endpoint sent a chunk")


@pytest.fixture
def api(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    """The API in this process, on the stack's settings (read from its environment, as `serve` reads them)."""
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    return TestClient(create_app(Settings(), dispatcher=NoChunks()))


def test_a_finished_job_is_watched_paged_and_its_outputs_fetched(  # type: ignore[no-untyped-def]
    stack: Stack, api: TestClient, start_worker
) -> None:
    manifest = stack.home / "shots.jsonl"
    manifest.write_text("".join(json.dumps(shot) + "\n" for shot in SHOTS))
    start_worker()
    submitted = stack.cli("submit", "generate", "--input", str(manifest), "--width", "96", "--height", "64")
    job_id = submitted.stdout.split()[-1]

    def ended() -> bool:
        return api.get(f"/v1/jobs/{job_id[:8]}").json()["status"] not in ("queued", "running")

    wait_for(ended, 120, f"job {job_id} did not end")
    status = api.get(f"/v1/jobs/{job_id}").json()
    assert (status["status"], status["succeeded"], status["failed"]) == ("succeeded", 3, 0), status
    assert status["errors"] == {} and status["gpu_seconds"] > 0
    listed = api.get("/v1/jobs?kind=generate&status=succeeded").json()["jobs"]
    assert [job["id"] for job in listed] == [job_id]
    assert api.get(f"/v1/jobs/{job_id}/failures").json() == {"items": [], "next": None}
    assert api.get("/v1/health").json() == {"status": "ok", "database": "ok"}

    # Results in pages of two on PostgreSQL's server-side cursor: the same rows as results.jsonl.
    first = api.get(f"/v1/jobs/{job_id}/results?limit=2")
    assert first.headers["x-next-after"] == "1"
    rest = api.get(first.headers["link"][1 : first.headers["link"].index(">")])
    assert "x-next-after" not in rest.headers
    written = stack.written(f"outputs/{job_id}/results.jsonl").decode()
    assert first.text + rest.text == written
    rows = [json.loads(line) for line in written.splitlines()]
    assert [row["id"] for row in rows] == [shot["id"] for shot in SHOTS]

    s3 = stack.s3()
    for row in rows:
        bucket, key = row["output"].removeprefix("s3://").split("/", 1)
        stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        answer = api.get(f"/v1/jobs/{job_id}/items/{row['id']}/output")
        assert answer.status_code == 200, answer.text
        assert (answer.content, answer.headers["content-type"]) == (stored, "image/png")
        thumb = api.get(f"/v1/jobs/{job_id}/items/{row['id']}/output?thumb=32")
        assert thumb.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(thumb.content)) as small, Image.open(io.BytesIO(stored)) as image:
            assert image.size == (96, 64)
            assert small.format == "JPEG" and small.size[0] == 32 and abs(small.size[1] - 64 * 32 / 96) <= 1

    # An output gone from the bucket, and text the database cannot hold, are refusals, never 5xx.
    bucket, key = rows[2]["output"].removeprefix("s3://").split("/", 1)
    s3.delete_object(Bucket=bucket, Key=key)
    missing = api.get(f"/v1/jobs/{job_id}/items/boat/output?thumb=64")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "output_missing")
    for path, field in (
        ("/v1/jobs?source=a%00b", "source"),
        (f"/v1/jobs/{job_id}/failures?code=x%00", "code"),
        (f"/v1/jobs/{job_id}/items/fo%00x/output", "item_id"),
    ):
        answer = api.get(path)
        assert (answer.status_code, answer.json()["error"]["field"]) == (422, field), answer.text
