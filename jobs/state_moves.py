"""The one transition function and the conditions every status-changing statement is built from.

A statement that moves items or jobs says which target it moves them to; the states it may move them out of
come from the tables in jobs/lifecycle.py (`item_sources`, `job_sources`) and end up in its WHERE clause.
The job's counters move in the same transaction, by the number of rows that actually moved.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Column, CursorResult, Integer, Table, Update, bindparam, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from jobs.lifecycle import ItemStatus, JobStatus, item_sources, job_sources
from jobs.models import Item, Job

#: The job's counter of the items in each state.
COUNTERS = {
    ItemStatus.QUEUED: "n_queued",
    ItemStatus.RUNNING: "n_running",
    ItemStatus.SUCCEEDED: "n_succeeded",
    ItemStatus.FAILED: "n_failed",
    ItemStatus.CANCELLED: "n_cancelled",
}

ITEMS = cast(Table, Item.__table__)
JOBS = cast(Table, Job.__table__)


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def rowcount(result: object) -> int:
    """Rows an UPDATE matched."""
    return int(cast(CursorResult[Any], result).rowcount or 0)


def is_postgresql(session: Session) -> bool:
    """Whether the session talks to PostgreSQL (some statements have a faster form there)."""
    return session.get_bind().dialect.name == "postgresql"


def _status_in(column: Column[Any], states: Collection[StrEnum]) -> ColumnElement[bool]:
    values = [state.value for state in states]
    return column == values[0] if len(values) == 1 else column.in_(values)


def items_movable(target: ItemStatus, *, among: Collection[ItemStatus] = ()) -> ColumnElement[bool]:
    """An item's status is one the table lets it move out of to `target` (only those of `among`, if given;
    a state of `among` the table forbids raises ValueError)."""
    return _status_in(ITEMS.c.status, item_sources(target, among=among))


def jobs_movable(*targets: JobStatus, among: Collection[JobStatus] = ()) -> ColumnElement[bool]:
    """A job's status is one the table lets it move out of to each of `targets` (see `items_movable`)."""
    return _status_in(JOBS.c.status, job_sources(*targets, among=among))


@functools.cache
def _counters_move(source: ItemStatus, target: ItemStatus) -> Update:
    src, dst = JOBS.c[COUNTERS[source]], JOBS.c[COUNTERS[target]]
    count = bindparam("count", type_=Integer)
    return update(JOBS).where(JOBS.c.id == bindparam("job")).values({src: src - count, dst: dst + count})


def move_counters(session: Session, job_id: str, source: ItemStatus, target: ItemStatus, count: int) -> None:
    """Move `count` items from the job's `source` counter to its `target` counter."""
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
    """Move the items matching `where` from `source` to `target`; return how many moved.

    ValueError if the table does not allow the move.
    """
    stmt = (
        update(Item)
        .where(Item.job_id == job_id, items_movable(target, among=(source,)), where)
        .values(status=target.value, **(values or {}))
        .execution_options(synchronize_session=False)
    )
    moved = rowcount(session.execute(stmt))
    move_counters(session, job_id, source, target, moved)
    return moved
