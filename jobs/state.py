"""Item and job transitions as conditional UPDATEs, with the job's counters kept in the same transaction.

A duplicate message or a late worker cannot move a finished item backwards: every UPDATE takes the states
it may move a row out of from the tables in jobs/lifecycle.py, and counters change by the number of rows
that actually moved. The statements live in modules by what they act on; this module names them all:

- jobs/state_moves.py: the one transition function, the conditions built from the tables, the counters;
- jobs/state_claims.py: claims, quarantine, leases and attempts, hand-backs;
- jobs/state_outcomes.py: outputs and failures recorded, cancellations, outputs to reuse;
- jobs/state_jobs.py: a job started, finalized, reopened, and what a worker reads of it.
"""

from __future__ import annotations

from jobs.state_claims import (
    ClaimedItem,
    checkpoint_items,
    claim_items,
    claim_next_items,
    expire_leases,
    release_items,
)
from jobs.state_jobs import (
    FINAL_STATUS,
    cancel_requested,
    finalize_job,
    job_for_chunk,
    job_has_queued_items,
    reopen_job,
    restart_job,
    start_job,
)
from jobs.state_moves import COUNTERS, items_movable, jobs_movable, move_counters, now, transition
from jobs.state_outcomes import cancel_items, record_failures, record_successes, reusable_outputs

__all__ = [
    "COUNTERS",
    "FINAL_STATUS",
    "ClaimedItem",
    "cancel_items",
    "cancel_requested",
    "checkpoint_items",
    "claim_items",
    "claim_next_items",
    "expire_leases",
    "finalize_job",
    "items_movable",
    "job_for_chunk",
    "job_has_queued_items",
    "jobs_movable",
    "move_counters",
    "now",
    "record_failures",
    "record_successes",
    "release_items",
    "reopen_job",
    "restart_job",
    "reusable_outputs",
    "start_job",
    "transition",
]
