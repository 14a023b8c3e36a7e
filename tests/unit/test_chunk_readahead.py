"""Read-ahead: a chunk prepares the first micro-batch of the job's next items; the next chunk takes what it
claimed of them and fetches the rest (SQLite, local files, the torch-free backend)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

import storage
from jobs.db import session_scope, upgrade
from jobs.errors import StorageUnavailable
from jobs.lifecycle import JobKind
from jobs.models import Item
from jobs.state import ClaimedItem, claim_items
from tests.helpers import embedded_settings
from workers import prepare
from workers.chunk import ChunkInterrupted, ChunkOutcome, run_chunk
from workers.embedded import EmbeddedRunner
from workers.readahead import ReadAhead

BATCH = 4
CHUNK = 8


def _photos(folder: Path, count: int) -> list[Path]:
    """Photos that all differ, so that every item has a caption of its own."""
    folder.mkdir(parents=True)
    paths = []
    for index in range(count):
        path = folder / f"photo{index:03d}.png"
        Image.new("RGB", (40 + index, 30), (index * 13 % 256, index * 7 % 256, 99)).save(path)
        paths.append(path)
    return paths


class Reads:
    """Counts reads of inputs; while `failing`, reads of the sources in `fail` raise StorageUnavailable."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: Sequence[str] = ()) -> None:
        self.count: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.fail = set(fail)
        self.failing = bool(fail)
        self._lock = threading.Lock()
        real = prepare.read_allowed_input

        def read(url: str, roots: Sequence[str], options: Any, max_bytes: int | None = None) -> bytes:
            with self._lock:
                self.count[url] += 1
                if self.failing and url in self.fail:
                    self.failed[url] += 1
                    raise storage.StorageUnavailable(f"{url}: storage unavailable (simulated)")
            return real(url, roots, options, max_bytes)

        monkeypatch.setattr(prepare, "read_allowed_input", read)


def _settle(runner: EmbeddedRunner) -> None:
    """Wait until every task handed to the I/O threads so far has ended."""
    threads = runner.settings.io_threads
    barrier = threading.Barrier(threads + 1)
    for _ in range(threads):
        runner.runtime.io_pool.submit(barrier.wait)
    barrier.wait(timeout=30)


def _runner(home: Path, database_url: str = "", **overrides: Any) -> EmbeddedRunner:
    settings = embedded_settings(
        home,
        chunk_size=CHUNK,
        caption_batch=BATCH,
        io_threads=2,
        database_url=database_url,
        input_roots=[str(home.parent)],
        **overrides,
    )
    if database_url:
        upgrade(database_url)
    return EmbeddedRunner(settings)


def _submit(runner: EmbeddedRunner, folder: Path) -> str:
    return runner.client.submit(JobKind.CAPTION, str(folder))


def _chunk(runner: EmbeddedRunner, job_id: str, start: int) -> ChunkOutcome:
    return run_chunk(runner.runtime, JobKind.CAPTION, job_id, start, start + CHUNK)


def _items(runner: EmbeddedRunner, job_id: str) -> list[Item]:
    with session_scope(runner.settings.resolved_database_url) as session:
        return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq)))


def _results(runner: EmbeddedRunner, job_id: str) -> list[tuple[str, str, str | None, int]]:
    return [(i.key, i.status, i.output, i.attempts) for i in _items(runner, job_id)]


@pytest.fixture
def database_url() -> str:
    """Empty: the embedded SQLite file (tests/integration/test_chunk_readahead_postgresql.py runs the tests
    that take this fixture on PostgreSQL)."""
    return ""


def test_the_next_chunk_takes_its_first_micro_batch_from_the_read_ahead(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = _photos(tmp_path / "in", 2 * CHUNK)
    reads = Reads(monkeypatch)
    runner = _runner(tmp_path / "home", database_url)
    job_id = _submit(runner, tmp_path / "in")
    first, second = _chunk(runner, job_id, 0), _chunk(runner, job_id, CHUNK)
    assert (first.claimed, first.succeeded, first.read_ahead) == (CHUNK, CHUNK, 0)
    assert (second.claimed, second.succeeded, second.read_ahead) == (CHUNK, CHUNK, BATCH)
    assert reads.count == Counter({str(photo): 1 for photo in photos})  # nothing was fetched twice

    plain = _runner(tmp_path / "plain", read_ahead=False)
    plain_job = _submit(plain, tmp_path / "in")
    assert [_chunk(plain, plain_job, start).read_ahead for start in (0, CHUNK)] == [0, 0]
    expected = _results(plain, plain_job)
    assert all(status == "succeeded" and attempts == 1 for _, status, _, attempts in expected)
    assert len({output for _, _, output, _ in expected}) == 2 * CHUNK
    assert _results(runner, job_id) == expected


def test_items_read_ahead_are_left_by_the_chunk_of_another_worker_and_run_in_this_workers_next_chunk(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = _photos(tmp_path / "in", 3 * CHUNK)
    reads = Reads(monkeypatch)
    runner = _runner(tmp_path / "home", database_url)
    job_id = _submit(runner, tmp_path / "in")
    _chunk(runner, job_id, 0)
    ahead = _items(runner, job_id)[CHUNK : CHUNK + BATCH]
    assert [(i.status, i.worker, i.attempts) for i in ahead] == [("running", runner.runtime.name, 1)] * BATCH
    # Another worker runs the chunk those items belong to: it claims the rest of it.
    with session_scope(runner.settings.resolved_database_url) as session:
        taken, leased = claim_items(
            session,
            job_id=job_id,
            start=CHUNK,
            stop=2 * CHUNK,
            worker="other",
            lease_seconds=600,
            max_attempts=3,
        )
    assert [item.seq for item in taken] == list(range(CHUNK + BATCH, 2 * CHUNK))
    assert leased
    # This worker's next chunk of the job runs them with its own items.
    third = _chunk(runner, job_id, 2 * CHUNK)
    assert (third.claimed, third.succeeded, third.read_ahead) == (CHUNK + BATCH, CHUNK + BATCH, BATCH)
    items = _items(runner, job_id)
    assert [(i.status, i.worker) for i in items[CHUNK + BATCH : 2 * CHUNK]] == [("running", "other")] * BATCH
    done = items[:CHUNK] + items[CHUNK : CHUNK + BATCH] + items[2 * CHUNK :]
    assert all(i.status == "succeeded" and i.attempts == 1 for i in done)
    assert all(reads.count[str(photo)] == 1 for photo in photos if str(photo) in {i.source for i in done})
    assert not any(reads.count[str(photo)] for photo in photos[CHUNK + BATCH : 2 * CHUNK])


def _queued_chunks(runner: EmbeddedRunner) -> list[tuple[str, int, int]]:
    """The chunks waiting in the embedded runner's queue (taken out of it)."""
    chunks = []
    while not runner.dispatcher.chunks.empty():
        chunk = runner.dispatcher.chunks.get()
        chunks.append((chunk.job_id, chunk.start, chunk.stop))
    return chunks


def test_items_read_ahead_go_back_to_the_queue_when_no_chunk_of_their_job_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = _photos(tmp_path / "in", 2 * CHUNK)
    reads = Reads(monkeypatch)
    runner = _runner(tmp_path / "home")
    runner.runtime.read_ahead.hold_s = 0.05
    job_id = _submit(runner, tmp_path / "in")
    _queued_chunks(runner)  # the submission's
    _chunk(runner, job_id, 0)
    deadline = time.monotonic() + 30
    while _items(runner, job_id)[CHUNK].status == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    ahead = _items(runner, job_id)[CHUNK : CHUNK + BATCH]
    assert [(i.status, i.attempts) for i in ahead] == [("queued", 0)] * BATCH  # the attempt is taken back
    assert _queued_chunks(runner) == [(job_id, CHUNK, CHUNK + BATCH)]  # and published again
    # What was prepared is kept: this worker's chunk over those items takes it. That chunk claims the last
    # queued items ahead, and with nothing queued in the job then, runs them itself rather than hold them.
    again = run_chunk(runner.runtime, JobKind.CAPTION, job_id, CHUNK, CHUNK + BATCH)
    assert (again.claimed, again.succeeded, again.read_ahead) == (2 * BATCH, 2 * BATCH, 2 * BATCH)
    assert [(i.status, i.attempts) for i in _items(runner, job_id)] == [("succeeded", 1)] * 2 * CHUNK
    assert reads.count == Counter({str(photo): 1 for photo in photos})
    assert not runner.runtime.read_ahead.holds(job_id)


def test_a_chunk_of_another_job_hands_the_read_ahead_back(tmp_path: Path) -> None:
    _photos(tmp_path / "in", 2 * CHUNK)  # both jobs have the same items: only the job tells them apart
    runner = _runner(tmp_path / "home")
    job_a, job_b = _submit(runner, tmp_path / "in"), _submit(runner, tmp_path / "in")
    _queued_chunks(runner)  # the submissions'
    first = [_chunk(runner, job, 0) for job in (job_a, job_b)]
    assert [(o.claimed, o.succeeded, o.read_ahead) for o in first] == [(CHUNK, CHUNK, 0)] * 2
    # Job b's chunk handed back what job a's chunk had claimed ahead, and published it again.
    assert _queued_chunks(runner) == [(job_a, CHUNK, CHUNK + BATCH)]
    assert [(i.status, i.attempts) for i in _items(runner, job_a)[CHUNK:]] == [("queued", 0)] * CHUNK
    outcomes = [_chunk(runner, job, CHUNK) for job in (job_a, job_b)]
    assert [(o.claimed, o.succeeded, o.read_ahead) for o in outcomes] == [(CHUNK, CHUNK, 0)] * 2
    for job in (job_a, job_b):
        assert [(i.status, i.attempts) for i in _items(runner, job)] == [("succeeded", 1)] * 2 * CHUNK


def test_a_failed_read_ahead_is_fetched_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = _photos(tmp_path / "in", 2 * CHUNK)
    ahead = [str(photo) for photo in photos[CHUNK : CHUNK + BATCH]]
    reads = Reads(monkeypatch, fail=ahead)
    runner = _runner(tmp_path / "home")
    job_id = _submit(runner, tmp_path / "in")
    assert _chunk(runner, job_id, 0).succeeded == CHUNK
    _settle(runner)  # the read-ahead has failed by now
    reads.failing = False
    assert reads.failed and set(reads.failed) <= set(ahead)
    second = _chunk(runner, job_id, CHUNK)
    assert (second.claimed, second.succeeded, second.read_ahead) == (CHUNK, CHUNK, 0)
    assert [reads.count[url] - reads.failed[url] for url in ahead] == [1] * BATCH
    assert all(i.status == "succeeded" and i.attempts == 1 for i in _items(runner, job_id))


def test_nothing_is_read_ahead_when_it_is_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = _photos(tmp_path / "in", 2 * CHUNK)
    reads = Reads(monkeypatch)
    runner = _runner(tmp_path / "home", read_ahead=False)
    job_id = _submit(runner, tmp_path / "in")
    assert _chunk(runner, job_id, 0).read_ahead == 0
    assert sorted(reads.count) == [str(photo) for photo in photos[:CHUNK]]
    assert _chunk(runner, job_id, CHUNK).read_ahead == 0
    assert reads.count == Counter({str(photo): 1 for photo in photos})


@dataclass
class _Work:
    item: ClaimedItem
    tag: str


def _item(seq: int, *, counted: bool = False, text: str = "") -> ClaimedItem:
    return ClaimedItem(seq, f"k{seq}", f"s{seq}", text, None, attempts=0, counted=counted)


def test_taken_work_carries_the_claimed_items_and_a_late_failure_is_prepared_again() -> None:
    read_ahead: ReadAhead[_Work] = ReadAhead()
    ok: Future[list[_Work]] = Future()
    late: Future[list[_Work]] = Future()
    ok.set_result([_Work(_item(0), "ahead"), _Work(_item(1), "ahead")])
    read_ahead.hold("job", "caption", [([_item(0), _item(1)], ok), ([_item(2), _item(3)], late)])
    # Item 1 changed since it was read ahead; item 4 was never read ahead.
    claimed = [_item(0, counted=True), _item(1, text="new"), _item(2, counted=True), _item(4)]
    taken = read_ahead.take("job", "caption", claimed)
    late.set_exception(StorageUnavailable("gone"))
    prepared: list[list[int]] = []

    def prepare(items: Sequence[ClaimedItem]) -> list[_Work]:
        prepared.append([item.seq for item in items])
        return [_Work(item, "fetched") for item in items]

    with ThreadPoolExecutor(1) as pool:
        works = taken.fetch(claimed, pool, prepare).result()
    assert [(w.item, w.tag) for w in works] == [
        (claimed[0], "ahead"),
        (claimed[1], "fetched"),
        (claimed[2], "fetched"),
        (claimed[3], "fetched"),
    ]
    assert sorted(prepared) == [[1, 4], [2]]
    assert taken.used == 1
    assert (len(taken), len(read_ahead.take("job", "caption", claimed))) == (0, 0)  # taken once


def test_a_stopping_worker_hands_back_the_items_it_claimed_ahead_and_publishes_them_again(
    tmp_path: Path,
) -> None:
    _photos(tmp_path / "in", 3 * CHUNK)
    runner = _runner(tmp_path / "home")
    job_id = _submit(runner, tmp_path / "in")
    _queued_chunks(runner)  # the submission's
    _chunk(runner, job_id, 0)  # claims items CHUNK.. ahead
    runner.runtime.stopping.set()
    with pytest.raises(ChunkInterrupted):
        _chunk(runner, job_id, 2 * CHUNK)
    items = _items(runner, job_id)
    assert all(i.status == "succeeded" for i in items[:CHUNK])
    assert [(i.status, i.attempts) for i in items[CHUNK:]] == [("queued", 0)] * 2 * CHUNK
    # The interrupted chunk's own message comes back; the items it took from the read-ahead get their own.
    assert _queued_chunks(runner) == [(job_id, CHUNK, CHUNK + BATCH)]


def test_items_claimed_ahead_of_a_job_cancelled_meanwhile_end_cancelled(tmp_path: Path) -> None:
    _photos(tmp_path / "in", 2 * CHUNK)
    runner = _runner(tmp_path / "home")
    job_id = _submit(runner, tmp_path / "in")
    _chunk(runner, job_id, 0)  # claims items CHUNK.. ahead
    report = runner.client.cancel(job_id)
    assert (report.status, report.cancelled, report.running) == ("running", CHUNK - BATCH, BATCH)
    outcome = _chunk(runner, job_id, CHUNK)  # the job's next chunk, on this worker
    assert (outcome.succeeded, outcome.read_ahead) == (0, 0)
    assert [i.status for i in _items(runner, job_id)[CHUNK:]] == ["cancelled"] * CHUNK
    assert runner.client.status(job_id).status == "cancelled"
    assert not runner.runtime.read_ahead.holds(job_id)
