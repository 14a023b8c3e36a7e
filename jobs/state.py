"""Item and job transitions as conditional UPDATEs, with the job's counters kept in the same transaction.

A duplicate message or a late worker cannot move a finished item backwards: every UPDATE names the states
it may move an item out of, and counters change by the number of rows that actually moved.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    JSON,
    CursorResult,
    Integer,
    Table,
    Text,
    Update,
    and_,
    any_,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

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
_C = _ITEMS.c
_JOBS = cast(Table, Job.__table__)
_J = _JOBS.c

# The statements a worker runs for every chunk and micro-batch are built once, with bound parameters: building
# and cache-keying a statement costs the worker more than the database's work to run it.
_RUNNING, _QUEUED = ItemStatus.RUNNING.value, ItemStatus.QUEUED.value
_IN_RANGE = and_(_C.job_id == bindparam("job"), _C.seq >= bindparam("start"), _C.seq < bindparam("stop"))
_EXPIRED = and_(_C.status == _RUNNING, _C.lease_until < bindparam("t"))
_POISON: dict[str, Any] = {
    "status": ItemStatus.FAILED.value,
    "error_code": POISONED,
    "finished_at": bindparam("t"),
    "lease_until": None,
    "error_message": bindparam("message"),
}
_POISON_QUEUED = (
    update(_ITEMS)
    .where(_IN_RANGE, _C.status == _QUEUED, _C.attempts >= bindparam("max_attempts"))
    .values(_POISON)
)
_POISON_EXPIRED = (
    update(_ITEMS).where(_IN_RANGE, _EXPIRED, _C.attempts >= bindparam("max_attempts")).values(_POISON)
)
_CLAIM = {
    "status": _RUNNING,
    "lease_until": bindparam("b_lease_until"),
    "worker": bindparam("b_worker"),
    "started_at": bindparam("t"),
}
_CLAIMED = (_C.seq, _C.key, _C.source, _C.text, _C.params, _C.attempts)
_CLAIM_EXPIRED = update(_ITEMS).where(_IN_RANGE, _EXPIRED).values(_CLAIM).returning(*_CLAIMED)
_CLAIM_QUEUED = update(_ITEMS).where(_IN_RANGE, _C.status == _QUEUED).values(_CLAIM).returning(*_CLAIMED)
# Queued items never tried, below a seq: the worker starts them at once, so their attempt is counted here.
_CLAIM_STARTING = (
    update(_ITEMS)
    .where(_IN_RANGE, _C.status == _QUEUED, _C.attempts == 0, _C.seq < bindparam("starting_below"))
    .values(_CLAIM)
    .values(attempts=1)
    .returning(*_CLAIMED)
)
# Items of a job nobody holds or tried, from a seq on: what a worker prepares ahead of its next chunk, claimed
# for it (the sub-select picks them; SKIP LOCKED leaves rows another claim is moving to that claim).
_NEXT_QUEUED = (
    select(_C.seq)
    .where(
        _C.job_id == bindparam("job"),
        _C.seq >= bindparam("after"),
        _C.seq < bindparam("before"),
        _C.status == _QUEUED,
        _C.attempts == 0,
    )
    .order_by(_C.seq)
    .limit(bindparam("limit"))
)


@functools.cache
def _claim_next_statement(postgresql: bool) -> Update:
    chosen = _NEXT_QUEUED.with_for_update(skip_locked=True) if postgresql else _NEXT_QUEUED
    return (
        update(_ITEMS)
        .where(_C.job_id == bindparam("job"), _C.seq.in_(chosen.scalar_subquery()), _C.status == _QUEUED)
        .values(_CLAIM)
        .values(attempts=1)
        .returning(*_CLAIMED)
    )


_START_JOB = (
    update(_JOBS)
    .where(_J.id == bindparam("job"), _J.status == JobStatus.QUEUED.value)
    .values(status=JobStatus.RUNNING.value, started_at=bindparam("t"))
)
_LEASED_ELSEWHERE = (
    select(_C.seq).where(_IN_RANGE, _C.status == _RUNNING, _C.worker != bindparam("b_worker")).limit(1)
)
_RUNNING_OF_JOB = (_C.job_id == bindparam("b_job"), _C.status == _RUNNING)
_SUCCEEDED: dict[str, Any] = {
    "status": ItemStatus.SUCCEEDED.value,
    "finished_at": bindparam("b_t"),
    "lease_until": None,
    "error_code": None,
    "error_message": None,
}
# One JSON object {seq: [output, fingerprint]}: one parameter for the driver to pass (arrays are escaped item
# by item).
_OUTPUTS = (
    func.json_each(bindparam("b_outputs", type_=JSON)).table_valued("key", "value").render_derived(name="v")
)
#: PostgreSQL: a micro-batch's outputs in one UPDATE joined to the seqs and outputs of the JSON object.
_RECORD_SUCCESSES = (
    update(_ITEMS)
    .where(*_RUNNING_OF_JOB, _C.seq == _OUTPUTS.c.key.cast(Integer))
    .values(
        output=_OUTPUTS.c.value.op("->>", return_type=Text)(literal_column("0")),
        fingerprint=_OUTPUTS.c.value.op("->>", return_type=Text)(literal_column("1")),
        **_SUCCEEDED,
    )
)
#: Elsewhere: one UPDATE per output (executemany).
_RECORD_SUCCESS = (
    update(_ITEMS)
    .where(*_RUNNING_OF_JOB, _C.seq == bindparam("b_seq"))
    .values(output=bindparam("b_output"), fingerprint=bindparam("b_fingerprint"), **_SUCCEEDED)
)
_COUNT_SKIPPED = (
    update(_JOBS).where(_J.id == bindparam("job")).values(n_skipped=_J.n_skipped + bindparam("count"))
)
_REUSABLE = select(_C.fingerprint, _C.output).where(
    _C.fingerprint.in_(bindparam("prints", expanding=True)),
    _C.status == ItemStatus.SUCCEEDED.value,
    _C.job_id != bindparam("job"),
    _C.output.is_not(None),
)
_RECORD_FAILURE = (
    update(_ITEMS)
    .where(*_RUNNING_OF_JOB, _C.seq == bindparam("b_seq"))
    .values(
        status=ItemStatus.FAILED.value,
        error_code=bindparam("b_code"),
        error_message=bindparam("b_message"),
        finished_at=bindparam("b_t"),
        lease_until=None,
    )
)
_FINALIZE = (
    update(_JOBS)
    .where(
        _J.id == bindparam("job"),
        _J.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
        _J.n_succeeded + _J.n_failed + _J.n_cancelled >= _J.total,
        # A cancelled job is final once its items ended, even if its submission never completed.
        or_(_J.submitting.is_(False), _J.cancel_requested.is_(True)),
    )
    .values(
        status=case(
            (_J.cancel_requested.is_(True), JobStatus.CANCELLED.value),
            (_J.n_failed == 0, JobStatus.SUCCEEDED.value),
            (_J.n_succeeded == 0, JobStatus.FAILED.value),
            else_=JobStatus.PARTIAL.value,
        ),
        finished_at=bindparam("t"),
    )
    .returning(_J.status)
)
_CANCEL_REQUESTED = select(_J.cancel_requested).where(_J.id == bindparam("job"))
_JOB_FOR_CHUNK = select(
    _J.kind, _J.params, _J.output_url, _J.cancel_requested, _J.status, _J.priority, _J.reuse_outputs
).where(_J.id == bindparam("job"))

_JOB_QUEUED = select(or_(_J.n_queued > 0, _J.submitting.is_(True))).where(_J.id == bindparam("job"))


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
    #: Whether the claim already counted this run's attempt (see `claim_items`).
    counted: bool = False


@functools.cache
def _counters_move(source: ItemStatus, target: ItemStatus) -> Update:
    src, dst = _J[_COUNTER[source]], _J[_COUNTER[target]]
    count = bindparam("count", type_=Integer)
    return update(_JOBS).where(_J.id == bindparam("job")).values({src: src - count, dst: dst + count})


def _move_counters(session: Session, job_id: str, source: ItemStatus, target: ItemStatus, count: int) -> None:
    if count == 0 or source == target:
        return
    session.execute(_counters_move(source, target), {"job": job_id, "count": count})


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
    starting_below: int = 0,
    job_queued: bool = True,
    check_leased: bool = True,
) -> tuple[list[ClaimedItem], bool]:
    """Claim the runnable items of a seq range for `worker`.

    Runnable: queued, or running with an expired lease (its worker died). Items already tried
    `max_attempts` times are quarantined as poisoned instead. Attempts are counted for the items a worker
    actually starts, so that the neighbours of an item that kills its worker are not quarantined with it: the
    claim counts them only for the queued, never tried items below seq `starting_below` (those the worker
    starts at once; `ClaimedItem.counted`), and `checkpoint_items` for the others when their turn comes.
    Returns the claimed items and whether items of the range are still leased by another worker (one more
    query, asked only if `check_leased`). The job is marked running unless the caller saw it was no longer
    queued (`job_queued`).
    """
    t = now()
    where = {"job": job_id, "start": start, "stop": stop, "t": t}
    message = (
        f"gave up after {max_attempts} attempts: the item stopped its worker or failed every time it ran"
    )
    poison = {**where, "max_attempts": max_attempts, "message": message}
    for source, stmt in ((ItemStatus.QUEUED, _POISON_QUEUED), (ItemStatus.RUNNING, _POISON_EXPIRED)):
        check_transition(source, ItemStatus.FAILED)
        _move_counters(session, job_id, source, ItemStatus.FAILED, _rowcount(session.execute(stmt, poison)))
    claim = {**where, "b_worker": worker, "b_lease_until": t + timedelta(seconds=lease_seconds)}
    # Expired items stay running: no counter moves for them.
    items = [ClaimedItem(*row) for row in session.execute(_CLAIM_EXPIRED, claim).all()]
    expired = len(items)
    if start < starting_below:
        rows = session.execute(_CLAIM_STARTING, {**claim, "starting_below": starting_below}).all()
        items += [
            ClaimedItem(row.seq, row.key, row.source, row.text, row.params, attempts=0, counted=True)
            for row in rows
        ]
    items += [ClaimedItem(*row) for row in session.execute(_CLAIM_QUEUED, claim).all()]
    _move_counters(session, job_id, ItemStatus.QUEUED, ItemStatus.RUNNING, len(items) - expired)
    if items and job_queued:
        session.execute(_START_JOB, {"job": job_id, "t": t})
    leased = False
    # With every seq of the range claimed here, none is leased elsewhere.
    if check_leased and len(items) < stop - start:
        leased = session.scalar(_LEASED_ELSEWHERE, {**where, "b_worker": worker}) is not None
    return sorted(items, key=lambda item: item.seq), leased


def claim_next_items(
    session: Session,
    *,
    job_id: str,
    after: int,
    before: int,
    limit: int,
    worker: str,
    lease_seconds: int,
) -> list[ClaimedItem]:
    """Claim for `worker` up to `limit` queued, never tried items of a job with `after` <= seq < `before`, in
    seq order: the read-ahead of a worker's next chunk. Their attempt is counted here (`counted`), as they
    are fetched at once; a chunk that claims their range later leaves them to this worker.
    """
    t = now()
    params = {
        "job": job_id,
        "after": after,
        "before": before,
        "limit": limit,
        "t": t,
        "b_worker": worker,
        "b_lease_until": t + timedelta(seconds=lease_seconds),
    }
    rows = session.execute(_claim_next_statement(_is_postgresql(session)), params).all()
    _move_counters(session, job_id, ItemStatus.QUEUED, ItemStatus.RUNNING, len(rows))
    items = [ClaimedItem(r.seq, r.key, r.source, r.text, r.params, attempts=0, counted=True) for r in rows]
    return sorted(items, key=lambda item: item.seq)


def _seq_in(name: str, postgresql: bool) -> ColumnElement[bool]:
    """`seq` in a list bound as `name`: one array parameter on PostgreSQL, a parameter per seq elsewhere."""
    if postgresql:
        return _C.seq == any_(bindparam(name, type_=ARRAY(Integer)))
    return _C.seq.in_(bindparam(name, expanding=True))


@functools.cache
def _checkpoint_statement(postgresql: bool, renew: bool) -> Update:
    # Items this worker still runs: a late worker whose items were handed to another changes nothing.
    held = update(_ITEMS).where(
        _C.job_id == bindparam("job"),
        _seq_in("seqs", postgresql),
        _C.status == _RUNNING,
        _C.worker == bindparam("b_worker"),
    )
    if not renew:
        return held.values(attempts=_C.attempts + 1)
    starting = case((_seq_in("starting", postgresql), 1), else_=0)
    return held.values(lease_until=bindparam("b_lease_until"), attempts=_C.attempts + starting)


def checkpoint_items(
    session: Session,
    *,
    job_id: str,
    worker: str,
    starting: Collection[int],
    renewing: Collection[int] = (),
    lease_seconds: int = 0,
) -> None:
    """Count one attempt for the items in `starting` and extend the lease of those in `renewing`: one UPDATE
    of the items this worker still runs.

    Attempts are committed before the work begins, so that an attempt which kills the worker still counts.
    """
    if not starting and not renewing:
        return
    params: dict[str, Any] = {"job": job_id, "b_worker": worker, "seqs": sorted({*starting, *renewing})}
    if renewing:
        params |= {"starting": sorted(starting), "b_lease_until": now() + timedelta(seconds=lease_seconds)}
    statement = _checkpoint_statement(_is_postgresql(session), bool(renewing))
    session.execute(statement, params)


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def record_successes(
    session: Session,
    *,
    job_id: str,
    outputs: dict[int, str],
    fingerprints: dict[int, str] | None = None,
    reused: bool = False,
) -> int:
    """Record outputs of running items (seq -> caption or URL, and what made each: see workers.reuse);
    return how many were recorded. `reused` outputs were taken from earlier jobs and count as skipped."""
    if not outputs:
        return 0
    t = now()
    prints = fingerprints or {}
    if _is_postgresql(session):
        values = {seq: [out, prints.get(seq)] for seq, out in outputs.items()}
        result = session.execute(_RECORD_SUCCESSES, {"b_job": job_id, "b_t": t, "b_outputs": values})
    else:
        rows = [
            {"b_job": job_id, "b_seq": seq, "b_output": out, "b_fingerprint": prints.get(seq), "b_t": t}
            for seq, out in outputs.items()
        ]
        result = session.execute(_RECORD_SUCCESS, rows)
    moved = _rowcount(result)
    _move_counters(session, job_id, ItemStatus.RUNNING, ItemStatus.SUCCEEDED, moved)
    if reused and moved:
        session.execute(_COUNT_SKIPPED, {"job": job_id, "count": moved})
    return moved


def reusable_outputs(session: Session, *, job_id: str, fingerprints: Collection[str]) -> dict[str, str]:
    """Outputs of succeeded items of other jobs with these fingerprints (fingerprint -> output)."""
    if not fingerprints:
        return {}
    rows = session.execute(_REUSABLE, {"prints": list(fingerprints), "job": job_id})
    return {fingerprint: output for fingerprint, output in rows}


def record_failures(session: Session, *, job_id: str, failures: dict[int, tuple[str, str]]) -> int:
    """Record failed running items (seq -> (error_code, message)); return how many were recorded."""
    if not failures:
        return 0
    t = now()
    rows = [
        {"b_job": job_id, "b_seq": seq, "b_code": code, "b_message": message[:2000], "b_t": t}
        for seq, (code, message) in failures.items()
    ]
    moved = _rowcount(session.execute(_RECORD_FAILURE, rows))
    _move_counters(session, job_id, ItemStatus.RUNNING, ItemStatus.FAILED, moved)
    return moved


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
    status = session.scalar(_FINALIZE, {"job": job_id, "t": now()})
    return JobStatus(status) if status else None


def reopen_job(session: Session, *, job_id: str) -> None:
    """Put a final job back to running after some of its items were queued again (resume, retry)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, or_(Job.n_queued > 0, Job.n_running > 0))
        .values(status=JobStatus.RUNNING.value, finished_at=None, cancel_requested=False)
    )
