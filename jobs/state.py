"""Item and job transitions as conditional UPDATEs, with the job's counters kept in the same transaction.

A duplicate message or a late worker cannot move a finished item backwards: every UPDATE names the states
it may move an item out of, and counters change by the number of rows that actually moved.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Table, and_, bindparam, case, or_, select, true, update
from sqlalchemy.orm import Session

from jobs.errors import POISONED
from jobs.lifecycle import ItemStatus, JobStatus, check_transition
from jobs.models import Item, Job

_COUNTER = {
    ItemStatus.QUEUED: "n_queued",
    ItemStatus.RUNNING: "n_running",
    ItemStatus.SUCCEEDED: "n_succeeded",
    ItemStatus.FAILED: "n_failed",
    ItemStatus.CANCELLED: "n_cancelled",
}


_ITEMS = cast(Table, Item.__table__)


def _rowcount(result: object) -> int:
    return int(cast(CursorResult[Any], result).rowcount or 0)


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class ClaimedItem:
    """An item a worker now holds, with what it needs to run it."""

    seq: int
    key: str
    source: str
    text: str
    params: dict[str, Any] | None
    #: Attempts started before this claim; above 0, an earlier one ended without a result (its worker died).
    attempts: int


def _move_counters(session: Session, job_id: str, source: ItemStatus, target: ItemStatus, count: int) -> None:
    if count == 0 or source == target:
        return
    src, dst = _COUNTER[source], _COUNTER[target]
    job = Job.__table__.c
    session.execute(
        update(Job).where(Job.id == job_id).values({src: job[src] - count, dst: job[dst] + count})
    )


def _range(job_id: str, start: int, stop: int) -> Any:
    return and_(Item.job_id == job_id, Item.seq >= start, Item.seq < stop)


def transition(
    session: Session,
    *,
    job_id: str,
    where: Any,
    source: ItemStatus,
    target: ItemStatus,
    values: dict[str, Any] | None = None,
) -> int:
    """Move the items matching `where` from `source` to `target`; return how many moved."""
    check_transition(source, target)
    stmt = (
        update(Item)
        .where(Item.job_id == job_id, Item.status == source.value, where)
        .values(status=target.value, **(values or {}))
        .execution_options(synchronize_session=False)
    )
    moved = _rowcount(session.execute(stmt))
    _move_counters(session, job_id, source, target, moved)
    return moved


def claim_items(
    session: Session,
    *,
    job_id: str,
    start: int,
    stop: int,
    worker: str,
    lease_seconds: int,
    max_attempts: int,
) -> tuple[list[ClaimedItem], bool]:
    """Claim the runnable items of a seq range for `worker`.

    Runnable: queued, or running with an expired lease (its worker died). Items already tried
    `max_attempts` times are quarantined as poisoned instead. A claim does not count an attempt:
    `start_attempts` does, for the items a worker actually starts, so that the neighbours of an item that
    kills its worker are not quarantined with it. Returns the claimed items and whether items of the range are
    still leased by another worker.
    """
    t = now()
    runnable_running = and_(Item.status == ItemStatus.RUNNING.value, Item.lease_until < t)
    in_range = _range(job_id, start, stop)
    for source in (ItemStatus.QUEUED, ItemStatus.RUNNING):
        extra = Item.lease_until < t if source is ItemStatus.RUNNING else true()
        transition(
            session,
            job_id=job_id,
            where=and_(in_range, extra, Item.attempts >= max_attempts),
            source=source,
            target=ItemStatus.FAILED,
            values={
                "error_code": POISONED,
                "finished_at": t,
                "lease_until": None,
                "error_message": f"gave up after {max_attempts} attempts: the item stopped its worker "
                "or failed every time it ran",
            },
        )
    claim_values = {
        "lease_until": t + timedelta(seconds=lease_seconds),
        "worker": worker,
        "started_at": t,
    }
    rows: list[Any] = []
    for source, extra in ((ItemStatus.RUNNING, runnable_running), (ItemStatus.QUEUED, true())):
        stmt = (
            update(Item)
            .where(in_range, Item.status == source.value, extra)
            .values(status=ItemStatus.RUNNING.value, **claim_values)
            .returning(Item.seq, Item.key, Item.source, Item.text, Item.params, Item.attempts)
            .execution_options(synchronize_session=False)
        )
        got = list(session.execute(stmt))
        _move_counters(session, job_id, source, ItemStatus.RUNNING, len(got))
        rows.extend(got)
    if rows:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
            .values(status=JobStatus.RUNNING.value, started_at=t)
        )
    leased = session.scalar(
        select(Item.seq)
        .where(in_range, Item.status == ItemStatus.RUNNING.value, Item.worker != worker)
        .limit(1)
    )
    items = sorted((ClaimedItem(*row) for row in rows), key=lambda item: item.seq)
    return items, leased is not None


def _update_held(
    session: Session, *, job_id: str, seqs: Sequence[int], worker: str, values: dict[str, Any]
) -> None:
    # Only items this worker still runs: a late worker whose items were handed to another changes nothing.
    if not seqs:
        return
    session.execute(
        update(Item)
        .where(
            Item.job_id == job_id,
            Item.seq.in_(seqs),
            Item.status == ItemStatus.RUNNING.value,
            Item.worker == worker,
        )
        .values(values)
        .execution_options(synchronize_session=False)
    )


def renew_lease(
    session: Session, *, job_id: str, seqs: Sequence[int], worker: str, lease_seconds: int
) -> None:
    """Extend the lease of items this worker is still running."""
    lease_until = now() + timedelta(seconds=lease_seconds)
    _update_held(session, job_id=job_id, seqs=seqs, worker=worker, values={"lease_until": lease_until})


def start_attempts(session: Session, *, job_id: str, seqs: Sequence[int], worker: str) -> None:
    """Count one attempt for items this worker starts to fetch and run; committed before the work begins, so
    that an attempt which kills the worker still counts."""
    _update_held(session, job_id=job_id, seqs=seqs, worker=worker, values={"attempts": Item.attempts + 1})


def record_successes(session: Session, *, job_id: str, outputs: dict[int, str]) -> int:
    """Record outputs of running items (seq -> caption or URL); return how many were recorded."""
    if not outputs:
        return 0
    stmt = (
        update(_ITEMS)
        .where(
            Item.job_id == bindparam("b_job"),
            Item.seq == bindparam("b_seq"),
            Item.status == ItemStatus.RUNNING.value,
        )
        .values(
            status=ItemStatus.SUCCEEDED.value,
            output=bindparam("b_output"),
            finished_at=bindparam("b_t"),
            lease_until=None,
            error_code=None,
            error_message=None,
        )
    )
    t = now()
    rows = [{"b_job": job_id, "b_seq": seq, "b_output": out, "b_t": t} for seq, out in outputs.items()]
    moved = _rowcount(session.execute(stmt, rows))
    _move_counters(session, job_id, ItemStatus.RUNNING, ItemStatus.SUCCEEDED, moved)
    return moved


def record_failures(session: Session, *, job_id: str, failures: dict[int, tuple[str, str]]) -> int:
    """Record failed running items (seq -> (error_code, message)); return how many were recorded."""
    if not failures:
        return 0
    stmt = (
        update(_ITEMS)
        .where(
            Item.job_id == bindparam("b_job"),
            Item.seq == bindparam("b_seq"),
            Item.status == ItemStatus.RUNNING.value,
        )
        .values(
            status=ItemStatus.FAILED.value,
            error_code=bindparam("b_code"),
            error_message=bindparam("b_message"),
            finished_at=bindparam("b_t"),
            lease_until=None,
        )
    )
    t = now()
    rows = [
        {"b_job": job_id, "b_seq": seq, "b_code": code, "b_message": message[:2000], "b_t": t}
        for seq, (code, message) in failures.items()
    ]
    moved = _rowcount(session.execute(stmt, rows))
    _move_counters(session, job_id, ItemStatus.RUNNING, ItemStatus.FAILED, moved)
    return moved


def release_items(
    session: Session, *, job_id: str, seqs: Sequence[int], worker: str, uncount: Collection[int] = ()
) -> int:
    """Hand running items back to the queue (graceful stop, transient fault); return how many.

    The attempts started for the items in `uncount` are taken back: a stop or an unavailable service is not
    the item's doing and must not bring it closer to quarantine.
    """
    moved = 0
    taken_back = sorted(set(seqs) & set(uncount))
    kept = sorted(set(seqs) - set(uncount))
    for group, values in (
        (taken_back, {"lease_until": None, "attempts": Item.attempts - 1}),
        (kept, {"lease_until": None}),
    ):
        if group:
            moved += transition(
                session,
                job_id=job_id,
                where=and_(Item.seq.in_(group), Item.worker == worker),
                source=ItemStatus.RUNNING,
                target=ItemStatus.QUEUED,
                values=values,
            )
    return moved


def cancel_items(session: Session, *, job_id: str, seqs: Sequence[int] | None = None) -> int:
    """Cancel queued items (all of the job's, or those of `seqs` that are queued or running)."""
    t = now()
    values = {"finished_at": t, "lease_until": None}
    if seqs is None:
        return transition(
            session,
            job_id=job_id,
            where=true(),
            source=ItemStatus.QUEUED,
            target=ItemStatus.CANCELLED,
            values=values,
        )
    where = Item.seq.in_(seqs)
    return sum(
        transition(
            session, job_id=job_id, where=where, source=source, target=ItemStatus.CANCELLED, values=values
        )
        for source in (ItemStatus.QUEUED, ItemStatus.RUNNING)
    )


def finalize_job(session: Session, *, job_id: str) -> JobStatus | None:
    """Mark the job final if every item has ended; return its final status if this call made it final."""
    ended = Job.n_succeeded + Job.n_failed + Job.n_cancelled
    final_status = case(
        (Job.cancel_requested.is_(True), JobStatus.CANCELLED.value),
        (Job.n_failed == 0, JobStatus.SUCCEEDED.value),
        (Job.n_succeeded == 0, JobStatus.FAILED.value),
        else_=JobStatus.PARTIAL.value,
    )
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
            ended >= Job.total,
        )
        .values(status=final_status, finished_at=now())
        .returning(Job.status)
        .execution_options(synchronize_session=False)
    )
    status = session.scalar(stmt)
    return JobStatus(status) if status else None


def reopen_job(session: Session, *, job_id: str) -> None:
    """Put a final job back to running after some of its items were queued again (resume, retry)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, or_(Job.n_queued > 0, Job.n_running > 0))
        .values(status=JobStatus.RUNNING.value, finished_at=None, cancel_requested=False)
    )
