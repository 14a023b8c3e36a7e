"""Job and item states, and the one table of allowed item transitions."""

from __future__ import annotations

from enum import StrEnum


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
#: FAILED -> QUEUED is `retry --failed`; CANCELLED -> QUEUED is `resume` of a cancelled job.
ITEM_TRANSITIONS: dict[ItemStatus, frozenset[ItemStatus]] = {
    ItemStatus.QUEUED: frozenset({ItemStatus.RUNNING, ItemStatus.FAILED, ItemStatus.CANCELLED}),
    ItemStatus.RUNNING: frozenset(
        {ItemStatus.RUNNING, ItemStatus.QUEUED, ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.CANCELLED}
    ),
    ItemStatus.SUCCEEDED: frozenset(),
    ItemStatus.FAILED: frozenset({ItemStatus.QUEUED}),
    ItemStatus.CANCELLED: frozenset({ItemStatus.QUEUED}),
}


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


class JobKind(StrEnum):
    """What a job asks of the model."""

    CAPTION = "caption"
    GENERATE = "generate"
    EDIT = "edit"


def check_transition(source: ItemStatus, target: ItemStatus) -> None:
    """Raise ValueError if the table does not allow moving an item from `source` to `target`."""
    if target not in ITEM_TRANSITIONS[source]:
        raise ValueError(f"item cannot go from {source.value} to {target.value}")
