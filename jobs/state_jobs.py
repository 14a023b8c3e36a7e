"""Statements on job rows: start, finish and reopen a job, and what a worker reads of one.

Each status change is a conditional UPDATE whose allowed source states come from `JOB_TRANSITIONS`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from jobs.lifecycle import FINAL_JOB_STATES, JobStatus
from jobs.notify import arm_values, new_delivery_id
from jobs.state_moves import JOBS, jobs_movable, now, rowcount

_J = JOBS.c
_THE_JOB = _J.id == bindparam("job")
_RUNNING = JobStatus.RUNNING.value
#: Jobs that have not ended: those the table lets end.
_NOT_ENDED = jobs_movable(*FINAL_JOB_STATES)
_HAS_OPEN_ITEMS = or_(_J.n_queued > 0, _J.n_running > 0)

#: The status a job ends with, from its counters and its cancel flag.
FINAL_STATUS = case(
    (_J.cancel_requested.is_(True), JobStatus.CANCELLED.value),
    (_J.n_failed == 0, JobStatus.SUCCEEDED.value),
    (_J.n_succeeded == 0, JobStatus.FAILED.value),
    else_=JobStatus.PARTIAL.value,
)

_START = (
    update(JOBS)
    .where(_THE_JOB, jobs_movable(JobStatus.RUNNING, among=(JobStatus.QUEUED,)))
    .values(status=_RUNNING, started_at=bindparam("t"))
)
_FINALIZE = (
    update(JOBS)
    .where(
        _THE_JOB,
        _NOT_ENDED,
        _J.n_succeeded + _J.n_failed + _J.n_cancelled >= _J.total,
        # A cancelled job is final once its items ended, even if its submission never completed.
        or_(_J.submitting.is_(False), _J.cancel_requested.is_(True)),
    )
    # Each ending arms the job's notification anew (jobs/notify.py): a job resumed and ended again notifies
    # again, under a new delivery id.
    .values(status=FINAL_STATUS, finished_at=bindparam("t"), **arm_values(bindparam("delivery")))
    .returning(_J.status)
)
_REOPEN = (
    update(JOBS)
    .where(_THE_JOB, _HAS_OPEN_ITEMS, jobs_movable(JobStatus.RUNNING, among=FINAL_JOB_STATES))
    .values(status=_RUNNING, finished_at=None, cancel_requested=False)
)
_UNCANCEL = update(JOBS).where(_THE_JOB, _HAS_OPEN_ITEMS, _NOT_ENDED).values(cancel_requested=False)
_RESTART = (
    update(JOBS)
    .where(_THE_JOB, jobs_movable(JobStatus.RUNNING, among=FINAL_JOB_STATES))
    .values(status=_RUNNING, finished_at=None)
)
_CANCEL_REQUESTED = select(_J.cancel_requested).where(_THE_JOB)
_JOB_FOR_CHUNK = select(
    _J.kind, _J.params, _J.output_url, _J.cancel_requested, _J.status, _J.priority, _J.reuse_outputs
).where(_THE_JOB)
_JOB_QUEUED = select(or_(_J.n_queued > 0, _J.submitting.is_(True))).where(_THE_JOB)


def start_job(session: Session, *, job_id: str, t: datetime) -> None:
    """Mark a queued job running, started at `t` (its first items were claimed)."""
    session.execute(_START, {"job": job_id, "t": t})


def finalize_job(session: Session, *, job_id: str, at: datetime | None = None) -> JobStatus | None:
    """Mark the job final if every item has ended; return its final status if this call made it final.

    The job's finishing time is `at`, or now.
    """
    status = session.scalar(_FINALIZE, {"job": job_id, "t": at or now(), "delivery": new_delivery_id()})
    return JobStatus(status) if status else None


def reopen_job(session: Session, *, job_id: str) -> None:
    """After some of its items were queued again by a user (resume, retry): put a final job back to running,
    and forget a cancel the user asked for, whether or not the job had ended."""
    params = {"job": job_id}
    if not rowcount(session.execute(_REOPEN, params)):
        session.execute(_UNCANCEL, params)


def restart_job(session: Session, *, job_id: str) -> bool:
    """Put a final job back to running, its cancel flag as it was; True if it was final.

    For a job whose items say it has not ended (see jobs/repair.py); `finalize_job` ends it again.
    """
    return rowcount(session.execute(_RESTART, {"job": job_id})) > 0


def job_for_chunk(session: Session, *, job_id: str) -> Any:
    """What a worker reads of a job before claiming a chunk (kind, params, output_url, cancel_requested,
    status, priority); None for an unknown job."""
    return session.execute(_JOB_FOR_CHUNK, {"job": job_id}).first()


def job_has_queued_items(connection: Session | Connection, *, job_id: str) -> bool:
    """Whether a job has queued items, or its submission may still add some (from its counters)."""
    return bool(connection.execute(_JOB_QUEUED, {"job": job_id}).scalar())


def cancel_requested(connection: Session | Connection, *, job_id: str) -> bool:
    """The job's cancel flag."""
    return bool(connection.scalar(_CANCEL_REQUESTED, {"job": job_id}))
