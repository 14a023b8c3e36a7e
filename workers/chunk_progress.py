"""What a running chunk reports of itself: to Flower as task events (workers/monitor.py) and to tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkProgress:
    """Where a running chunk stands, with its job's counters read in the same transaction."""

    job_id: str
    kind: str
    start: int
    stop: int
    claimed: int
    succeeded: int
    failed: int
    cancelled: int
    #: Seconds in the backend so far, and since the chunk started.
    model_s: float
    elapsed_s: float
    #: The job's items, and those of them that ended (succeeded, failed or cancelled).
    job_items: int
    job_done: int
