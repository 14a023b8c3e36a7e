"""A job's failed items counted by error code, for `status`, the metrics and the notification of its end."""

from __future__ import annotations

from sqlalchemy import func, literal, select

from jobs.db import session_scope
from jobs.lifecycle import ItemStatus
from jobs.models import Item

#: Failed items read at most to count failures by error code.
ERRORS_SCANNED = 100_000


def errors_by_code(database_url: str, job_id: str, limit: int = ERRORS_SCANNED) -> dict[str, int]:
    """Failed items per error code, over at most `limit` failed items (through the status index, which
    holds failed items only, so the cost follows the failures, not the job's size)."""
    # The state inline, not bound: the planner must see it to use the partial status index.
    failed_state = literal(ItemStatus.FAILED.value, literal_execute=True)
    failed = (
        select(Item.error_code)
        .where(Item.job_id == job_id, Item.status == failed_state)
        .limit(limit)
        .subquery()
    )
    with session_scope(database_url) as session:
        rows = session.execute(select(failed.c.error_code, func.count()).group_by(failed.c.error_code))
        return {code or "unknown": count for code, count in rows}
