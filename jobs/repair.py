"""Recount a job from its items.

The counters on a job row move by deltas, in the transaction that moves its items, so that status is one row
read whatever the job's size. Should they drift all the same (a row edited by hand, a bug), the job shows
wrong numbers, or never ends because its counters never add up. `repair_job` counts the items, writes the
counts onto the row in one transaction, ends the job if every item has ended (or puts a job that ended back
to running if some have not), and reports what it changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from jobs.db import ensure_schema, session_scope
from jobs.errors import JobNotFound
from jobs.lifecycle import JobStatus
from jobs.results import deliver_results
from jobs.settings import Settings
from jobs.state import COUNTERS, FINAL_STATUS, finalize_job, restart_job
from jobs.state_moves import ITEMS, JOBS

_J, _C = JOBS.c, ITEMS.c
_THE_JOB = _J.id == bindparam("job")
#: The counters a repair sets, under the names `status` shows them by, with their columns.
COUNTER_COLUMNS = {
    "total": "total",
    **{status.value: column for status, column in COUNTERS.items()},
    "skipped": "n_skipped",
}
# Touching the row takes its lock (SQLite: the database's write lock) before the items are counted. Every
# transaction that moves items moves the job's counters after them, in the same transaction: it has either
# committed before this lock, and is counted, or it waits for the repair and then moves the counters it
# wrote by what it did.
_LOCK = (
    update(JOBS)
    .where(_THE_JOB)
    .values(total=_J.total)
    .returning(
        _J.status,
        _J.finished_at,
        _J.submitting,
        _J.cancel_requested,
        *(_J[column] for column in COUNTER_COLUMNS.values()),
    )
)
_COUNT = select(_C.status, func.count()).where(_C.job_id == bindparam("job")).group_by(_C.status)
_FINAL_STATUS = select(FINAL_STATUS).where(_THE_JOB)
_STATUS = select(_J.status).where(_THE_JOB)


@dataclass(frozen=True)
class RepairReport:
    """What a repair found on a job row and what it left there."""

    job_id: str
    #: Counters before and after, by name (`COUNTER_COLUMNS`).
    before: dict[str, int]
    after: dict[str, int]
    status_before: str
    status_after: str

    @property
    def changes(self) -> dict[str, tuple[int | str, int | str]]:
        """What changed: name -> (before, after); the job's status under "status"."""
        found: dict[str, tuple[int | str, int | str]] = {
            name: (self.before[name], value)
            for name, value in self.after.items()
            if self.before[name] != value
        }
        if self.status_before != self.status_after:
            found["status"] = (self.status_before, self.status_after)
        return found

    @property
    def changed(self) -> bool:
        """Whether the repair changed anything."""
        return bool(self.changes)

    @property
    def ended(self) -> bool:
        """Whether the repair ended a job that had not ended."""
        return not JobStatus(self.status_before).final and JobStatus(self.status_after).final

    def describe(self) -> str:
        """One line for a person: what changed, or that nothing needed to."""
        if not self.changed:
            total = self.after["total"]
            return f"job {self.job_id}: its counters match its {total} items; nothing to repair"
        return f"job {self.job_id} repaired: " + ", ".join(
            f"{name} {old} -> {new}" for name, (old, new) in self.changes.items()
        )


def repair_job(target: Settings | Session, job_id: str) -> RepairReport:
    """Recount a job's counters from its items and fix its row and status; JobNotFound for an unknown job.

    Given settings, the repair is its own transaction, and a job it ends gets its results file; given a
    session, it is part of the caller's transaction (and the reconciler writes the results file later).
    """
    if isinstance(target, Session):
        return _repair(target, job_id)
    url = target.resolved_database_url
    if target.embedded:
        ensure_schema(url)
    with session_scope(url) as session:
        report = _repair(session, job_id)
    if report.ended:
        deliver_results(target, job_id)
    return report


def _repair(session: Session, job_id: str) -> RepairReport:
    params = {"job": job_id}
    row = session.execute(_LOCK, params).first()
    if row is None:
        raise JobNotFound(f"no job {job_id}")
    before = {name: int(row._mapping[column]) for name, column in COUNTER_COLUMNS.items()}
    counts = {status: int(count) for status, count in session.execute(_COUNT, params)}
    after = {name: counts.get(name, 0) for name in COUNTER_COLUMNS}
    after["total"] = sum(counts.values())
    # Reused outputs leave no mark on their items: only their count on the job, which is part of `succeeded`.
    after["skipped"] = min(before["skipped"], after["succeeded"])
    if after != before:
        values = {COUNTER_COLUMNS[name]: value for name, value in after.items()}
        session.execute(update(JOBS).where(_THE_JOB).values(values), params)
    status = JobStatus(row.status)
    still_open = after["queued"] + after["running"] > 0
    can_end = not row.submitting or row.cancel_requested
    if status.final and (still_open or (can_end and session.scalar(_FINAL_STATUS, params) != status)):
        # A final status its items contradict: back to running, which the table allows, and ended again
        # below (at the time it first ended) once its items say it has.
        restart_job(session, job_id=job_id)
    if not still_open:
        finalize_job(session, job_id=job_id, at=row.finished_at if status.final else None)
    return RepairReport(
        job_id=job_id,
        before=before,
        after=after,
        status_before=status.value,
        status_after=str(session.scalar(_STATUS, params)),
    )
