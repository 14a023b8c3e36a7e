"""Job and item states, and the one table of allowed transitions for each.

Every SQL statement that changes a status takes the states it may move a row out of from these tables
(`item_sources`, `job_sources`), so that a duplicate message or a late worker cannot move a finished item
backwards: the statement's WHERE clause does not match it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import TypeVar


class ItemStatus(StrEnum):
    """Where one item is in its life."""

    #: Waiting for a worker (new, handed back, or retried).
    QUEUED = "queued"
    #: Claimed by a worker; `lease_until` says until when the claim holds.
    RUNNING = "running"
    #: Output recorded.
    SUCCEEDED = "succeeded"
    #: Given up: bad input, a bug, or too many attempts; `error_code` says which.
    FAILED = "failed"
    #: The job was cancelled before the item ran.
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """True for states no worker moves the item out of."""
        return self in FINAL_ITEM_STATES


FINAL_ITEM_STATES = frozenset({ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.CANCELLED})

#: from -> allowed targets. RUNNING -> RUNNING is a re-claim after the lease expired;
#: FAILED -> QUEUED is `retry --failed`; CANCELLED -> QUEUED is `resume` of a cancelled job. Those two are
#: the only ways out of a final state (`USER_REOPENS`), and only a user's command takes them.
ITEM_TRANSITIONS: dict[ItemStatus, frozenset[ItemStatus]] = {
    ItemStatus.QUEUED: frozenset({ItemStatus.RUNNING, ItemStatus.FAILED, ItemStatus.CANCELLED}),
    ItemStatus.RUNNING: frozenset(
        {ItemStatus.RUNNING, ItemStatus.QUEUED, ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.CANCELLED}
    ),
    ItemStatus.SUCCEEDED: frozenset(),
    ItemStatus.FAILED: frozenset({ItemStatus.QUEUED}),
    ItemStatus.CANCELLED: frozenset({ItemStatus.QUEUED}),
}

#: The moves out of a final item state, each made by one user command only: `retry --failed` and `resume`.
USER_REOPENS = frozenset({(ItemStatus.FAILED, ItemStatus.QUEUED), (ItemStatus.CANCELLED, ItemStatus.QUEUED)})


class JobStatus(StrEnum):
    """Where a job is. A job whose items all ended is final."""

    #: Items waiting; no worker has started any.
    QUEUED = "queued"
    #: At least one item claimed.
    RUNNING = "running"
    #: Every item succeeded.
    SUCCEEDED = "succeeded"
    #: Every item ended, some failed: outputs of the others are there; `retry --failed` redoes the rest.
    PARTIAL = "partial"
    #: Every item failed.
    FAILED = "failed"
    #: Cancelled by a user; items that had finished keep their outputs.
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """True once every item has ended."""
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


FINAL_JOB_STATES = frozenset(status for status in JobStatus if status.final)

#: from -> allowed targets. A job starts when its first item is claimed and ends when all have ended (a job
#: none of whose items was claimed ends from queued: all cancelled, say); a final job runs again when
#: `resume` or `retry --failed` queue some of its items again, or when `repair` finds items still open.
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, *FINAL_JOB_STATES}),
    JobStatus.RUNNING: FINAL_JOB_STATES,
    **{status: frozenset({JobStatus.RUNNING}) for status in JobStatus if status.final},
}


class JobKind(StrEnum):
    """What a job asks of the model."""

    CAPTION = "caption"
    GENERATE = "generate"
    EDIT = "edit"


State = TypeVar("State", ItemStatus, JobStatus)


def _sources(
    table: Mapping[State, frozenset[State]], what: str, targets: tuple[State, ...], among: Collection[State]
) -> tuple[State, ...]:
    allowed = tuple(source for source, moves in table.items() if all(target in moves for target in targets))
    if not among:
        return allowed
    for source in among:
        if source not in allowed:
            refused = next(target for target in targets if target not in table[source])
            raise ValueError(f"{what} cannot go from {source.value} to {refused.value}")
    return tuple(source for source in allowed if source in among)


def item_sources(*targets: ItemStatus, among: Collection[ItemStatus] = ()) -> tuple[ItemStatus, ...]:
    """The states the table lets an item move out of to each of `targets`, or those of `among`.

    A state of `among` the table does not allow raises ValueError: a statement that names a move the table
    forbids is a bug, found when the statement is built.
    """
    return _sources(ITEM_TRANSITIONS, "item", targets, among)


def job_sources(*targets: JobStatus, among: Collection[JobStatus] = ()) -> tuple[JobStatus, ...]:
    """The states the table lets a job move out of to each of `targets`, or those of `among` (see
    `item_sources`)."""
    return _sources(JOB_TRANSITIONS, "job", targets, among)


def check_transition(source: ItemStatus, target: ItemStatus) -> None:
    """Raise ValueError if the table does not allow moving an item from `source` to `target`."""
    item_sources(target, among=(source,))
