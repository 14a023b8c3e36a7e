"""The producer's Python API beyond submission: short job ids, waiting for a job, its results as rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import update

from jobs.api import Client, JobReport
from jobs.db import session_scope
from jobs.errors import InvalidParameters, JobNotFound
from jobs.lifecycle import JobKind
from jobs.models import Item, Job
from jobs.submit import ItemSpec
from tests.helpers import embedded_settings, write_photos
from workers.embedded import EmbeddedRunner


class KeptChunks:
    """A dispatcher that keeps the chunks: no worker runs them."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Nothing to do."""


def _job_with_id(client: Client, job_id: str) -> str:
    """A queued job whose id is `job_id` (ids are random: two sharing a prefix are made by hand)."""
    made = client.submit_items(JobKind.GENERATE, [ItemSpec(key="a", text="a fox")])
    with session_scope(client.db) as session:
        session.execute(update(Item).where(Item.job_id == made).values(job_id=job_id))
        session.execute(update(Job).where(Job.id == made).values(id=job_id))
    return job_id


def test_a_unique_prefix_of_eight_characters_names_its_job(tmp_path: Path) -> None:
    client = Client(embedded_settings(tmp_path), KeptChunks())
    first = _job_with_id(client, "abcdef01" + "0" * 24)
    second = _job_with_id(client, "abcdef01" + "1" * 24)
    other = _job_with_id(client, "abcdef02" + "0" * 24)

    assert client.resolve(other[:8]) == other
    assert client.resolve(first) == first, "a whole id is itself, even when it prefixes nothing else"
    assert client.resolve(second[:9].upper()) == second
    with pytest.raises(InvalidParameters, match="ambiguous") as refused:
        client.resolve("abcdef01")
    assert first in str(refused.value) and second in str(refused.value) and other not in str(refused.value)
    with pytest.raises(InvalidParameters, match="at least its first 8 characters"):
        client.resolve("abcdef0")
    with pytest.raises(JobNotFound):
        client.resolve("ffffffff")
    with pytest.raises(InvalidParameters, match="not a job id"):
        client.resolve("abcdef0%")


@pytest.mark.parametrize(
    "given", ["abcdef01\x00", "abcdef01\x000000", "abcdefgh", "abcdef0_", "abcdef01 1", "abcdef\u0661\u0662"]
)
def test_anything_but_hex_digits_is_refused_before_the_database_is_asked(tmp_path: Path, given: str) -> None:
    client = Client(embedded_settings(tmp_path), KeptChunks())
    _job_with_id(client, "abcdef01" + "0" * 24)

    with pytest.raises(InvalidParameters, match="not a job id: give its hex digits") as refused:
        client.resolve(given)
    assert "\x00" not in str(refused.value), "the message shows a NUL escaped"


def test_wait_returns_the_final_report_and_times_out_on_a_job_that_does_not_end(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    ended = EmbeddedRunner(settings).run(JobKind.GENERATE, str(prompts)).id
    client = Client(settings, KeptChunks())
    seen: list[JobReport] = []

    report = client.wait(ended, timeout=0, on_progress=seen.append)
    assert report.final and report.status == "succeeded" and report.export_url
    assert [r.id for r in seen] == [ended]

    waiting = client.submit_items(JobKind.GENERATE, [ItemSpec(key="a", text="a fox")])
    with pytest.raises(TimeoutError, match=f"job {waiting} has not ended within 0.05s"):
        client.wait(waiting, timeout=0.05, poll_s=0.01)
    with pytest.raises(JobNotFound):
        client.wait("0" * 32, timeout=0)


def test_iter_results_yields_the_rows_of_results_jsonl(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    photos = tmp_path / "photos"
    write_photos(photos, count=3)
    (photos / "broken.jpg").write_bytes(b"not an image")
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(photos))
    client = Client(settings)

    assert report.export_url is not None
    written = [json.loads(line) for line in Path(report.export_url).read_text().splitlines()]
    rows = list(client.iter_results(report.id))
    assert rows == written
    assert [row["id"] for row in rows] == ["broken.jpg", "photo000.jpg", "photo001.jpg", "photo002.jpg"]
    assert [row["id"] for row in client.iter_results(report.id, statuses=["failed"])] == ["broken.jpg"]
    with pytest.raises(JobNotFound):
        client.iter_results("0" * 32)
