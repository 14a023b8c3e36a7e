"""A results file storage refused when its job ended: recorded, shown by status, written on a later try."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import jobs.results
from jobs.api import Client
from jobs.db import session_scope
from jobs.lifecycle import JobKind
from jobs.models import Job
from jobs.results import (
    EXPORT_BACKOFF_BASE_S,
    EXPORT_BACKOFF_CAP_S,
    deliver_results,
    export_backoff,
    retry_exports,
)
from jobs.settings import Settings
from storage import StorageUnavailable
from tests.helpers import embedded_settings
from workers.embedded import EmbeddedRunner


def _ended_job_without_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, str]:
    """A generate job run to its end while writing its results file fails as an unreachable endpoint does."""
    settings = embedded_settings(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")

    def storage_down(settings: Settings, job_id: str, fmt: str = "jsonl") -> str:
        raise StorageUnavailable(
            "could not connect to the endpoint", url=f"s3://bucket/{job_id}/results.jsonl"
        )

    with monkeypatch.context() as patch:
        patch.setattr(jobs.results, "write_results", storage_down)
        report = EmbeddedRunner(settings).run(JobKind.GENERATE, str(prompts))
    assert report.status == "succeeded"
    return settings, report.id


class Clock:
    """The clock the results module reads, moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.time = jobs.results.now()
        monkeypatch.setattr(jobs.results, "now", lambda: self.time)

    def advance(self, seconds: float) -> None:
        self.time += timedelta(seconds=seconds)


def test_a_results_file_refused_at_the_end_is_pending_then_written_by_a_later_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, job_id = _ended_job_without_results(tmp_path, monkeypatch)
    client = Client(settings)
    report = client.status(job_id)
    assert report.export_url is None and report.export_pending
    assert report.export_error and "StorageUnavailable: could not connect" in report.export_error
    assert report.as_dict()["export_pending"] is True

    clock = Clock(monkeypatch)
    assert retry_exports(settings) == [], "tried again before its backoff ran out"
    clock.advance(EXPORT_BACKOFF_BASE_S + 1)
    assert retry_exports(settings) == [job_id]
    report = client.status(job_id)
    assert report.export_url == str(tmp_path / "outputs" / job_id / "results.jsonl")
    assert Path(report.export_url).read_text().count("\n") == 2
    assert (report.export_pending, report.export_error) == (False, None)
    assert retry_exports(settings) == [], "a written file is not written again"


def test_each_failed_try_doubles_the_wait_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, job_id = _ended_job_without_results(tmp_path, monkeypatch)
    monkeypatch.setattr(jobs.results, "write_results", _refuse)
    clock = Clock(monkeypatch)
    for failures in range(2, 6):
        retry_at, _ = _export_columns(settings, job_id)
        clock.time = retry_at - timedelta(seconds=1)
        assert retry_exports(settings) == []
        assert _export_columns(settings, job_id) == (retry_at, failures - 1), "tried before its time"
        clock.time = retry_at
        assert retry_exports(settings) == []
        retry_at, counted = _export_columns(settings, job_id)
        assert counted == failures
        assert abs((retry_at - clock.time).total_seconds() - export_backoff(failures)) < 0.01
    report = Client(settings).status(job_id)
    assert report.export_pending and report.export_error == "StorageUnavailable: still down"


def _refuse(settings: Settings, job_id: str, fmt: str = "jsonl") -> str:
    raise StorageUnavailable("still down")


def _export_columns(settings: Settings, job_id: str) -> tuple[datetime, int]:
    """The job's next try (timezone-aware) and its failed tries so far."""
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.export_retry_at is not None
        retry_at = job.export_retry_at
        return retry_at if retry_at.tzinfo else retry_at.replace(tzinfo=UTC), job.export_failures


def test_a_try_under_way_is_left_to_the_process_making_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, job_id = _ended_job_without_results(tmp_path, monkeypatch)
    Clock(monkeypatch).advance(EXPORT_BACKOFF_BASE_S + 1)
    written: list[str] = []

    def write_while_another_reconciler_looks(settings: Settings, job_id: str, fmt: str = "jsonl") -> str:
        # Meanwhile, the reconciler of another worker finds the job due no longer.
        assert deliver_results(settings, job_id) is None
        written.append(job_id)
        return f"{settings.storage_url}/{job_id}/results.jsonl"

    monkeypatch.setattr(jobs.results, "write_results", write_while_another_reconciler_looks)
    assert retry_exports(settings) == [job_id]
    assert written == [job_id]


@given(failures=st.integers(min_value=1, max_value=40))
def test_the_backoff_doubles_up_to_its_cap(failures: int) -> None:
    assert 0 < export_backoff(failures) <= EXPORT_BACKOFF_CAP_S
    assert export_backoff(failures + 1) == min(EXPORT_BACKOFF_CAP_S, 2 * export_backoff(failures))
