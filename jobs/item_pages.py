"""Pages of a job's items for readers that come back for more (the HTTP API): results rows and failed items.

A page is a range of the (job_id, seq) key, never an offset: the cursor is the seq of the page's last item,
and the next page starts after it. Reading page k costs the rows of page k whatever k is, a million-item
job's last page as much as its first, and rows appended while a submission still reads its source land on
later pages instead of shifting earlier ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, literal, or_, select

from jobs.db import session_scope
from jobs.export_rows import row_prompt
from jobs.lifecycle import ItemStatus
from jobs.models import Item

#: The error code failures show for a failed item that has none (as jobs.failures counts it).
UNKNOWN_CODE = "unknown"


@dataclass(frozen=True)
class SeqRange:
    """The items of one page: those with `after < seq <= through` (`after` None: from the first)."""

    after: int | None
    through: int
    #: Items in the filter lie beyond `through`: the next page starts after it.
    more: bool


def results_range(
    database_url: str, job_id: str, statuses: Sequence[str], *, after: int | None, limit: int
) -> SeqRange | None:
    """The seq range of the next `limit` items in `statuses` (all when empty) after seq `after`; None when
    there is none. Reads seqs only (at most `limit` + 1 of them, through the primary key), so the range is
    known before the first row is sent."""
    items = Item.__table__.c
    where: list[ColumnElement[bool]] = [items.job_id == job_id]
    if statuses:
        where.append(items.status.in_(list(statuses)))
    if after is not None:
        where.append(items.seq > after)
    with session_scope(database_url) as session:
        ends = list(
            session.scalars(select(items.seq).where(*where).order_by(items.seq).offset(limit - 1).limit(2))
        )
        if ends:
            return SeqRange(after, ends[0], more=len(ends) > 1)
        # Fewer than `limit` left: the page ends at the last of them.
        last = session.scalar(select(func.max(items.seq)).where(*where))
    return None if last is None else SeqRange(after, last, more=False)


@dataclass(frozen=True)
class FailedItem:
    """A failed item and why it failed, as the failures of a job list it."""

    id: str
    seq: int
    input: str
    prompt: str
    error_code: str
    error_message: str | None
    attempts: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "seq": self.seq,
            "input": self.input,
            "prompt": self.prompt,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "attempts": self.attempts,
        }


def failed_items(
    database_url: str, job_id: str, *, codes: Sequence[str] = (), after: int | None = None, limit: int = 50
) -> tuple[list[FailedItem], int | None]:
    """The job's next `limit` failed items (with one of `codes`, if given; `unknown` names those without a
    code) after seq `after`, in source order, and the cursor of the page after them (None on the last page).
    The failed state is read through the status index, which holds no queued or succeeded items, so the cost
    follows the job's failures, not its size."""
    items = Item.__table__.c
    # The state inline, not bound: the planner must see it to use the partial status index.
    failed_state = literal(ItemStatus.FAILED.value, literal_execute=True)
    query = select(
        items.key,
        items.seq,
        items.source,
        items.text,
        items.provenance,
        items.error_code,
        items.error_message,
        items.attempts,
    ).where(items.job_id == job_id, items.status == failed_state)
    if codes:
        named = items.error_code.in_([code for code in codes if code != UNKNOWN_CODE])
        query = query.where(or_(named, items.error_code.is_(None)) if UNKNOWN_CODE in codes else named)
    if after is not None:
        query = query.where(items.seq > after)
    query = query.order_by(items.seq).limit(limit + 1)
    with session_scope(database_url) as session:
        rows = list(session.execute(query))
    found = [
        FailedItem(
            id=key,
            seq=seq,
            input=source,
            prompt=row_prompt(text, made),
            error_code=code or UNKNOWN_CODE,
            error_message=message,
            attempts=attempts,
        )
        for key, seq, source, text, made, code, message, attempts in rows[:limit]
    ]
    return found, (found[-1].seq if len(rows) > limit else None)
