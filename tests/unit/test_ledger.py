"""A chunk's ledger: every write on the bookkeeping thread, and progress reports throttled in one place, each
with the job's counters (SQLite, local files, the torch-free backend)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from jobs.db import get_engine
from jobs.lifecycle import JobKind
from tests.helpers import embedded_settings, write_photos
from workers import ledger
from workers.chunk import ChunkProgress, run_chunk
from workers.embedded import EmbeddedRunner

BATCH = 2
CHUNK = 8


def _runner(home: Path, **overrides: Any) -> EmbeddedRunner:
    write_photos(home / "in", count=2 * CHUNK, size=48)
    settings = embedded_settings(home, chunk_size=CHUNK, caption_batch=BATCH, io_threads=2, **overrides)
    runner = EmbeddedRunner(settings)
    runner.runtime.load()
    return runner


@pytest.fixture
def runner(tmp_path: Path) -> EmbeddedRunner:
    return _runner(tmp_path, read_ahead=False)


def _submit(runner: EmbeddedRunner) -> str:
    return runner.client.submit(JobKind.CAPTION, str(runner.settings.home / "in"))


class Reports:
    """Progress reports a chunk made, and the threads it made them on."""

    def __init__(self) -> None:
        self.reports: list[ChunkProgress] = []
        self.threads: set[str] = set()

    def __call__(self, report: ChunkProgress) -> None:
        self.reports.append(report)
        self.threads.add(threading.current_thread().name)


@pytest.fixture
def counter_reads(runner: EmbeddedRunner) -> Iterator[list[str]]:
    """Statements that read a job's counters for a report."""
    engine = get_engine(runner.settings.resolved_database_url)
    reads: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("SELECT jobs.total, jobs.n_succeeded, jobs.n_failed, jobs.n_cancelled"):
            reads.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    yield reads
    event.remove(engine, "before_cursor_execute", seen)


def test_a_report_after_each_record_when_due_and_one_when_the_chunk_ends(
    runner: EmbeddedRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger, "PROGRESS_EVERY_S", 0.0)
    job_id = _submit(runner)
    reports = Reports()
    outcome = run_chunk(runner.runtime, JobKind.CAPTION, job_id, 0, CHUNK, reports)
    # One per micro-batch recorded, and the chunk's end.
    assert len(reports.reports) == CHUNK // BATCH + 1
    assert reports.threads == {"ovis-record_0"}
    done = [r.succeeded for r in reports.reports]
    assert done == sorted(done) and done[-1] == outcome.succeeded == CHUNK
    last = reports.reports[-1]
    assert (last.job_id, last.kind, last.start, last.stop) == (job_id, "caption", 0, CHUNK)
    assert (last.claimed, last.succeeded, last.failed, last.cancelled) == (CHUNK, CHUNK, 0, 0)
    assert (last.job_items, last.job_done) == (2 * CHUNK, CHUNK)
    assert 0 <= last.model_s <= last.elapsed_s
    assert all(r.job_done == r.succeeded for r in reports.reports)  # the job's counters as recorded


def test_reports_are_throttled_and_counters_read_only_for_a_report(
    runner: EmbeddedRunner, monkeypatch: pytest.MonkeyPatch, counter_reads: list[str]
) -> None:
    monkeypatch.setattr(ledger, "PROGRESS_EVERY_S", 1e9)
    job_id = _submit(runner)
    reports = Reports()
    run_chunk(runner.runtime, JobKind.CAPTION, job_id, 0, CHUNK, reports)
    [final] = reports.reports  # only the end's
    assert (final.succeeded, final.job_done) == (CHUNK, CHUNK)
    assert len(counter_reads) == 1

    counter_reads.clear()
    run_chunk(runner.runtime, JobKind.CAPTION, job_id, CHUNK, 2 * CHUNK)  # no progress: no report, no read
    assert counter_reads == []


def test_a_chunk_that_ends_no_item_makes_no_report(runner: EmbeddedRunner) -> None:
    job_id = _submit(runner)
    runner.client.cancel(job_id)  # nothing runs: the job's items are cancelled at once
    reports = Reports()
    assert run_chunk(runner.runtime, JobKind.CAPTION, job_id, 0, CHUNK, reports).claimed == 0
    assert reports.reports == []


def _on_thread(calls: dict[str, set[str]], name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        calls.setdefault(name, set()).add(threading.current_thread().name)
        return real(*args, **kwargs)

    return call


def test_every_write_of_a_chunk_runs_on_the_bookkeeping_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = ("claim_items", "checkpoint_items", "record_successes", "finalize_job", "claim_next_items")
    calls: dict[str, set[str]] = {}
    for name in writes:
        monkeypatch.setattr(ledger, name, _on_thread(calls, name, getattr(ledger, name)))
    # The claim counts the first micro-batch and the lookahead (6 items); checkpoints count the rest; the
    # next chunk's first micro-batch is claimed ahead.
    runner = _runner(tmp_path)
    job_id = _submit(runner)
    assert run_chunk(runner.runtime, JobKind.CAPTION, job_id, 0, CHUNK).succeeded == CHUNK
    assert set(calls) == set(writes)
    assert all(threads == {"ovis-record_0"} for threads in calls.values()), calls
