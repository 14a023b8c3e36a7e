"""Streaming submission on SQLite: batches inserted as read, chunks sent once the source is checked, a bad
item discards the job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

import jobs.submit as submit_module
from jobs.api import Client
from jobs.db import session_scope
from jobs.errors import InputNotAllowed, InvalidSource
from jobs.lifecycle import JobKind
from jobs.models import Item, Job
from jobs.submit import ItemSpec, chunk_ranges
from tests.helpers import embedded_settings
from workers.chunk import run_chunk
from workers.embedded import EmbeddedRunner


class RecordingDispatcher:
    """Keeps the chunks it is asked to send."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, int, int]] = []

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        self.chunks.append((job_id, start, stop))


def _manifest(path: Path, count: int, bad_at: int | None = None) -> Path:
    with path.open("w") as out:
        for index in range(count):
            image = "/etc/passwd" if index == bad_at else f"img/{index}.jpg"
            out.write(json.dumps({"id": f"i{index:05d}", "image": image}) + "\n")
    return path


def test_chunks_are_sent_per_committed_batch_and_cover_every_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submit_module, "INSERT_BATCH", 100)
    settings = embedded_settings(tmp_path, chunk_size=8)
    dispatcher = RecordingDispatcher()
    client = Client(settings, dispatcher)
    job_id = client.submit(JobKind.CAPTION, str(_manifest(tmp_path / "m.jsonl", 1001)))
    report = client.status(job_id)
    assert (report.total, report.queued, report.status) == (1001, 1001, "queued")
    ranges = sorted((start, stop) for _, start, stop in dispatcher.chunks)
    # Batches hold whole chunks (96 = 12 x 8 items): no chunk spans two batches.
    assert all(stop - start <= 8 for start, stop in ranges)
    assert [seq for start, stop in ranges for seq in range(start, stop)] == list(range(1001))
    with session_scope(settings.resolved_database_url) as session:
        keys = list(session.scalars(select(Item.key).where(Item.job_id == job_id).order_by(Item.seq)))
    assert keys == [f"i{index:05d}" for index in range(1001)]


def test_no_chunk_goes_out_before_the_whole_source_is_read_and_checked(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, chunk_size=256)
    read = 0
    seen_at_first_send: list[int] = []

    def items() -> Iterator[ItemSpec]:
        nonlocal read
        for index in range(5000):
            read += 1
            yield ItemSpec(key=f"p{index}", text=f"prompt {index}")

    class Watching(RecordingDispatcher):
        def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
            if not self.chunks:
                seen_at_first_send.append(read)
            super().send_chunk(kind, job_id, start, stop, priority)

    Client(settings, Watching()).submit_items(JobKind.GENERATE, items())
    assert seen_at_first_send == [5000]


def test_a_job_is_not_final_while_its_submission_still_inserts_items(tmp_path: Path) -> None:
    # The workers end every item of the first batch before the next batch commits: the job stays open.
    settings = embedded_settings(tmp_path, chunk_size=256)
    runner = EmbeddedRunner(settings)
    statuses: list[str] = []

    class RunAtOnce(RecordingDispatcher):
        def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
            run_chunk(runner.runtime, kind, job_id, start, stop)
            report = runner.client.status(job_id)
            statuses.append(report.status)
            assert report.submitting

    items = (ItemSpec(key=f"p{index}", text=f"prompt {index}") for index in range(2000))
    job_id = Client(settings, RunAtOnce()).submit_items(JobKind.GENERATE, items)
    assert set(statuses) == {"running"}
    report = runner.client.status(job_id)
    assert (report.status, report.succeeded, report.total) == ("succeeded", 2000, 2000)
    assert not report.submitting
    # Its results were written once it was final, by the submission (no worker saw the end).
    assert (tmp_path / "outputs" / job_id / "results.jsonl").exists()


def test_a_bad_item_anywhere_discards_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submit_module, "INSERT_BATCH", 50)
    settings = embedded_settings(tmp_path, chunk_size=4)
    dispatcher = RecordingDispatcher()
    client = Client(settings, dispatcher)
    with pytest.raises(InputNotAllowed, match="'i00777'"):
        client.submit(JobKind.CAPTION, str(_manifest(tmp_path / "m.jsonl", 1000, bad_at=777)))
    assert dispatcher.chunks == []  # 700 items were inserted before the bad one: none was sent
    duplicate = tmp_path / "dup.jsonl"
    duplicate.write_text('{"id": "a", "image": "x.jpg"}\n{"id": "a", "image": "y.jpg"}\n')
    with pytest.raises(InvalidSource, match="share one id"):
        client.submit(JobKind.CAPTION, str(duplicate))
    with session_scope(settings.resolved_database_url) as session:
        assert session.scalar(select(Job.id)) is None
        assert session.scalar(select(Item.key)) is None


def test_items_given_directly_and_chunk_ranges(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, chunk_size=3)
    client = Client(settings, RecordingDispatcher())
    job_id = client.submit_items(
        JobKind.GENERATE, [ItemSpec(key=f"p{i}", text=f" prompt {i} ") for i in range(4)]
    )
    with session_scope(settings.resolved_database_url) as session:
        texts = list(session.scalars(select(Item.text).where(Item.job_id == job_id).order_by(Item.seq)))
    assert texts == [f"prompt {i}" for i in range(4)]
    assert chunk_ranges([0, 1, 2, 5, 9, 10], 2) == [(0, 2), (2, 6), (9, 11)]
    assert chunk_ranges([], 4) == []
