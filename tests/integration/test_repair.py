"""Repairing a job on PostgreSQL: counters corrupted by hand are recounted from the items, the job's status
follows its items, a repair racing a worker's transaction loses none of its moves, and the reconciler
recounts the jobs whose counters look wrong, and those only."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

import jobs.reconcile
from jobs.api import Client
from jobs.db import session_scope, upgrade
from jobs.dispatch import CeleryDispatcher
from jobs.errors import JobNotFound
from jobs.lifecycle import ItemStatus, JobKind, JobStatus
from jobs.models import Item, Job
from jobs.reconcile import reconcile
from jobs.repair import RepairReport, repair_job
from jobs.settings import Settings
from jobs.state import claim_items, finalize_job, move_counters, record_failures, record_successes
from jobs.submit import ItemSpec
from tests.helpers import embedded_settings
from tests.plugins.workers import wait_for

pytestmark = pytest.mark.integration

ITEMS = 10
NEW_YEAR = "2026-01-01T00:00:00Z"
COUNTERS = ("total", "n_queued", "n_running", "n_succeeded", "n_failed", "n_cancelled", "n_skipped")


class Dropped:
    """A dispatcher that sends nothing: the test moves the items itself."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Send nothing."""


@pytest.fixture
def settings(tmp_path: Path, pg_database: str) -> Settings:
    upgrade(pg_database)
    return embedded_settings(tmp_path, database_url=pg_database, broker_url="memory://", queue="repair")


def submit(settings: Settings) -> str:
    specs = [ItemSpec(key=f"p{index}", text=f"a lighthouse, take {index}") for index in range(ITEMS)]
    return Client(settings, Dropped()).submit_items(JobKind.GENERATE, specs)


NONE = range(0)


def run(
    settings: Settings, job_id: str, *, succeeded: range = NONE, failed: range = NONE, claimed: int = 0
) -> None:
    """Claim the first `claimed` items (at least those that end) and end some of them, as a worker does."""
    stop = max(claimed, succeeded.stop, failed.stop)
    with session_scope(settings.resolved_database_url) as session:
        claim_items(session, job_id=job_id, start=0, stop=stop, worker="w", lease_seconds=600, max_attempts=3)
        record_successes(session, job_id=job_id, outputs={seq: f"caption {seq}" for seq in succeeded})
        record_failures(session, job_id=job_id, failures={seq: ("invalid_image", "bad") for seq in failed})


def corrupt(settings: Settings, job_id: str, **values: Any) -> None:
    """A raw UPDATE of the job row, as a bug or a hand edit would leave it."""
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    with session_scope(settings.resolved_database_url) as session:
        session.execute(text(f"UPDATE jobs SET {assignments} WHERE id = :job"), {**values, "job": job_id})


def row(settings: Settings, job_id: str) -> dict[str, Any]:
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return {name: getattr(job, name) for name in (*COUNTERS, "status", "finished_at", "export_url")}


def recount(settings: Settings, job_id: str) -> dict[str, int]:
    """The counters the items give, counted here independently of the code under test."""
    with session_scope(settings.resolved_database_url) as session:
        statuses = list(session.scalars(select(Item.status).where(Item.job_id == job_id)))
    counted = {f"n_{state}": statuses.count(state) for state in ("queued", "running", "succeeded", "failed")}
    return counted | {"total": len(statuses), "n_cancelled": statuses.count("cancelled")}


def counters(settings: Settings, job_id: str) -> dict[str, int]:
    found = row(settings, job_id)
    return {name: found[name] for name in COUNTERS if name != "n_skipped"}


def test_corrupted_counters_of_a_running_job_are_recounted_from_its_items(settings: Settings) -> None:
    job_id = submit(settings)
    run(settings, job_id, succeeded=range(3), failed=range(3, 4), claimed=6)
    corrupt(settings, job_id, total=12, n_queued=1, n_running=0, n_succeeded=7, n_skipped=9)

    report = repair_job(settings, job_id)

    assert report.before == {
        "total": 12,
        "queued": 1,
        "running": 0,
        "succeeded": 7,
        "failed": 1,
        "cancelled": 0,
        "skipped": 9,
    }
    assert report.after == {
        "total": 10,
        "queued": 4,
        "running": 2,
        "succeeded": 3,
        "failed": 1,
        "cancelled": 0,
        "skipped": 3,
    }
    assert (report.status_before, report.status_after, report.ended) == ("running", "running", False)
    assert report.describe() == (
        f"job {job_id} repaired: total 12 -> 10, queued 1 -> 4, running 0 -> 2, succeeded 7 -> 3, "
        "skipped 9 -> 3"
    )
    assert counters(settings, job_id) == recount(settings, job_id)
    again = repair_job(settings, job_id)
    assert not again.changed
    assert again.describe() == f"job {job_id}: its counters match its 10 items; nothing to repair"
    with pytest.raises(JobNotFound):
        repair_job(settings, "no-such-job")


def test_a_job_whose_items_all_ended_is_finalized_and_its_results_written(settings: Settings) -> None:
    job_id = submit(settings)
    run(settings, job_id, succeeded=range(8), failed=range(8, 10))
    corrupt(settings, job_id, status="running", finished_at=None, n_running=2, n_succeeded=6)

    report = repair_job(settings, job_id)

    assert report.changes == {"running": (2, 0), "succeeded": (6, 8), "status": ("running", "partial")}
    assert report.ended
    after = row(settings, job_id)
    assert (after["status"], after["finished_at"] is not None) == ("partial", True)
    assert after["export_url"] and Path(after["export_url"]).is_file()
    assert counters(settings, job_id) == recount(settings, job_id)


def test_a_final_status_its_items_contradict_is_put_right(settings: Settings) -> None:
    open_job = submit(settings)
    run(settings, open_job, succeeded=range(5))
    corrupt(settings, open_job, status="succeeded", finished_at=NEW_YEAR, n_queued=0, n_succeeded=ITEMS)
    report = repair_job(settings, open_job)
    assert report.changes["status"] == ("succeeded", "running")
    assert row(settings, open_job)["finished_at"] is None

    ended = submit(settings)
    run(settings, ended, succeeded=range(9), failed=range(9, 10))
    with session_scope(settings.resolved_database_url) as session:
        assert finalize_job(session, job_id=ended) == JobStatus.PARTIAL
    finished_at = row(settings, ended)["finished_at"]
    corrupt(settings, ended, status="succeeded")
    report = repair_job(settings, ended)
    assert report.changes == {"status": ("succeeded", "partial")}
    assert row(settings, ended)["finished_at"] == finished_at  # when it ended is kept


def test_a_repair_waits_for_a_transaction_that_holds_the_job_row(settings: Settings) -> None:
    job_id = submit(settings)
    run(settings, job_id, claimed=6)
    url = settings.resolved_database_url
    reports: list[RepairReport] = []
    with session_scope(url) as worker:
        record_successes(worker, job_id=job_id, outputs={seq: "caption" for seq in range(4)})
        repairing = threading.Thread(target=lambda: reports.append(repair_job(settings, job_id)))
        repairing.start()
        wait_for(lambda: _waiting_on_a_lock(settings), 30, "the repair did not wait for the job row")
    repairing.join(30)
    assert not repairing.is_alive()
    assert not reports[0].changed
    assert counters(settings, job_id) == recount(settings, job_id)


def test_items_moved_before_a_repair_and_counted_after_it_are_counted_once(settings: Settings) -> None:
    job_id = submit(settings)
    run(settings, job_id, claimed=6)
    url = settings.resolved_database_url
    with session_scope(url) as worker:
        # A worker's transaction moves items first, then the counters: the repair comes in between.
        worker.execute(
            update(Item)
            .where(Item.job_id == job_id, Item.seq < 4, Item.status == ItemStatus.RUNNING.value)
            .values(status=ItemStatus.SUCCEEDED.value)
        )
        report = repair_job(settings, job_id)  # does not see the uncommitted items, and does not wait
        move_counters(worker, job_id, ItemStatus.RUNNING, ItemStatus.SUCCEEDED, 4)
    assert not report.changed
    assert counters(settings, job_id) == recount(settings, job_id)
    assert recount(settings, job_id)["n_succeeded"] == 4


def _waiting_on_a_lock(settings: Settings) -> bool:
    with session_scope(settings.resolved_database_url) as session:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE jobs%'"
        )
        return bool(session.scalar(query))


def test_the_reconciler_recounts_the_jobs_whose_counters_look_wrong_only(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    healthy = submit(settings)
    run(settings, healthy, succeeded=range(3), claimed=5)
    # Counters that do not add up to the total.
    unbalanced = submit(settings)
    run(settings, unbalanced, succeeded=range(ITEMS))
    corrupt(settings, unbalanced, n_succeeded=9)
    # Running items counted where none is left.
    phantom_running = submit(settings)
    run(settings, phantom_running, succeeded=range(ITEMS))
    corrupt(settings, phantom_running, n_running=2, n_succeeded=8)
    # Queued items counted where none is found to send again.
    phantom_queued = submit(settings)
    run(settings, phantom_queued, succeeded=range(ITEMS))
    corrupt(settings, phantom_queued, n_queued=1, n_succeeded=9)
    recounted: list[str] = []

    def spy(target: Settings, job_id: str) -> RepairReport:
        recounted.append(job_id)
        return repair_job(target, job_id)

    monkeypatch.setattr(jobs.reconcile, "repair_job", spy)
    report = reconcile(settings, CeleryDispatcher(settings))

    broken = {unbalanced, phantom_running, phantom_queued}
    assert set(recounted) == broken and len(recounted) == 3
    assert set(report.repaired) == broken and set(report.finalized) == broken
    for job_id in broken:
        assert row(settings, job_id)["status"] == "succeeded"
        assert counters(settings, job_id) == recount(settings, job_id)
    assert row(settings, healthy)["status"] == "running"
    assert report.redispatched == ITEMS - 5  # the healthy job's queued items, sent again: the queue was empty
