"""Workers' hold on items: claims (and quarantine of poisoned items), leases, attempts, and hand-backs.

Every statement that changes an item's status takes the states it may move out of from `ITEM_TRANSITIONS`
(`items_movable`); counters move by the number of rows that actually moved.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ARRAY, Integer, Update, and_, any_, bindparam, case, select, true, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from jobs.errors import POISONED
from jobs.lifecycle import ItemStatus
from jobs.models import Item
from jobs.state_jobs import start_job
from jobs.state_moves import ITEMS, is_postgresql, items_movable, move_counters, now, rowcount, transition

log = logging.getLogger(__name__)

_C = ITEMS.c
_QUEUED, _RUNNING, _FAILED = ItemStatus.QUEUED, ItemStatus.RUNNING, ItemStatus.FAILED

# The statements a worker runs for every chunk and micro-batch are built once, with bound parameters: building
# and cache-keying a statement costs the worker more than the database's work to run it.
_IN_RANGE = and_(_C.job_id == bindparam("job"), _C.seq >= bindparam("start"), _C.seq < bindparam("stop"))
_EXPIRED = _C.lease_until < bindparam("t")
_POISON: dict[str, Any] = {
    "status": _FAILED.value,
    "error_code": POISONED,
    "finished_at": bindparam("t"),
    "lease_until": None,
    "error_message": bindparam("message"),
}
_TRIED_ENOUGH = _C.attempts >= bindparam("max_attempts")
#: Quarantine, per source state: queued items, and running items whose worker died (lease expired).
_POISON_STATEMENTS = (
    (
        _QUEUED,
        update(ITEMS)
        .where(_IN_RANGE, items_movable(_FAILED, among=(_QUEUED,)), _TRIED_ENOUGH)
        .values(_POISON),
    ),
    (
        _RUNNING,
        update(ITEMS)
        .where(_IN_RANGE, items_movable(_FAILED, among=(_RUNNING,)), _EXPIRED, _TRIED_ENOUGH)
        .values(_POISON),
    ),
)
_CLAIM: dict[str, Any] = {
    "status": _RUNNING.value,
    "lease_until": bindparam("b_lease_until"),
    "worker": bindparam("b_worker"),
    "started_at": bindparam("t"),
}
_CLAIMED = (_C.seq, _C.key, _C.source, _C.text, _C.params, _C.attempts)
_CLAIMABLE_QUEUED = items_movable(_RUNNING, among=(_QUEUED,))
_CLAIM_EXPIRED = (
    update(ITEMS)
    .where(_IN_RANGE, items_movable(_RUNNING, among=(_RUNNING,)), _EXPIRED)
    .values(_CLAIM)
    .returning(*_CLAIMED)
)
_CLAIM_QUEUED = update(ITEMS).where(_IN_RANGE, _CLAIMABLE_QUEUED).values(_CLAIM).returning(*_CLAIMED)
# Queued items never tried, below a seq: the worker starts them at once, so their attempt is counted here.
_CLAIM_STARTING = (
    update(ITEMS)
    .where(_IN_RANGE, _CLAIMABLE_QUEUED, _C.attempts == 0, _C.seq < bindparam("starting_below"))
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
        _CLAIMABLE_QUEUED,
        _C.attempts == 0,
    )
    .order_by(_C.seq)
    .limit(bindparam("limit"))
)


@functools.cache
def _claim_next_statement(postgresql: bool) -> Update:
    chosen = _NEXT_QUEUED.with_for_update(skip_locked=True) if postgresql else _NEXT_QUEUED
    return (
        update(ITEMS)
        .where(_C.job_id == bindparam("job"), _C.seq.in_(chosen.scalar_subquery()), _CLAIMABLE_QUEUED)
        .values(_CLAIM)
        .values(attempts=1)
        .returning(*_CLAIMED)
    )


_LEASED_ELSEWHERE = (
    select(_C.seq).where(_IN_RANGE, _C.status == _RUNNING.value, _C.worker != bindparam("b_worker")).limit(1)
)


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
    for source, stmt in _POISON_STATEMENTS:
        poisoned = rowcount(session.execute(stmt, poison))
        move_counters(session, job_id, source, _FAILED, poisoned)
        if poisoned:
            log.warning(
                "%d items of job %s quarantined as %s: %s",
                poisoned,
                job_id,
                POISONED,
                message,
                extra={"job_id": job_id},
            )
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
    move_counters(session, job_id, _QUEUED, _RUNNING, len(items) - expired)
    if items and job_queued:
        start_job(session, job_id=job_id, t=t)
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
    rows = session.execute(_claim_next_statement(is_postgresql(session)), params).all()
    move_counters(session, job_id, _QUEUED, _RUNNING, len(rows))
    items = [ClaimedItem(r.seq, r.key, r.source, r.text, r.params, attempts=0, counted=True) for r in rows]
    return sorted(items, key=lambda item: item.seq)


def seq_in(name: str, postgresql: bool) -> ColumnElement[bool]:
    """`seq` in a list bound as `name`: one array parameter on PostgreSQL, a parameter per seq elsewhere."""
    if postgresql:
        return _C.seq == any_(bindparam(name, type_=ARRAY(Integer)))
    return _C.seq.in_(bindparam(name, expanding=True))


@functools.cache
def _checkpoint_statement(postgresql: bool, renew: bool) -> Update:
    # Items this worker still runs: a late worker whose items were handed to another changes nothing.
    held = update(ITEMS).where(
        _C.job_id == bindparam("job"),
        seq_in("seqs", postgresql),
        _C.status == _RUNNING.value,
        _C.worker == bindparam("b_worker"),
    )
    if not renew:
        return held.values(attempts=_C.attempts + 1)
    starting = case((seq_in("starting", postgresql), 1), else_=0)
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
    statement = _checkpoint_statement(is_postgresql(session), bool(renewing))
    session.execute(statement, params)


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
                source=_RUNNING,
                target=_QUEUED,
                values=values,
            )
    return moved


def expire_leases(session: Session, *, job_id: str, every: bool = False) -> int:
    """Queue again the running items of a job whose lease has expired (their worker died), or all of its
    running items with `every` (their workers are known to be gone); return how many."""
    return transition(
        session,
        job_id=job_id,
        where=true() if every else Item.lease_until < now(),
        source=_RUNNING,
        target=_QUEUED,
        values={"lease_until": None},
    )
