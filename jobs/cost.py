"""What jobs cost in model time: GPU-seconds per item, per job and per worker, and the estimate to finish.

An item's GPU-seconds are its share of every model call it was part of: a call's seconds split evenly over
the items in it. A micro-batch that runs in one call gives each item an equal share; one split after running
out of memory, or run again item by item to find the one that fails, charges each call to the items in it,
the failed calls included: the time was spent for them. Over its attempts an item's seconds add up, and a
job's are the sum of its items' (both kept in the transaction that records the micro-batch's results).

The figure is wall time of the model call on the worker's device: what a GPU is held for, the quantity a
bill by the GPU-hour counts. The seconds of items whose worker died before recording them are not counted.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobs.models import WorkerTotals
from jobs.state_moves import ITEMS, JOBS, is_postgresql, now

if TYPE_CHECKING:
    from jobs.api import JobReport

_C = ITEMS.c
_J = JOBS.c
#: Shares equal to this many decimals are written by one statement.
SHARE_DECIMALS = 6

_ADD_TO_ITEMS = (
    update(ITEMS)
    .where(_C.job_id == bindparam("job"), _C.seq.in_(bindparam("seqs", expanding=True)))
    .values(gpu_seconds=func.coalesce(_C.gpu_seconds, 0.0) + bindparam("share"))
)
_ADD_TO_JOB = (
    update(JOBS).where(_J.id == bindparam("job")).values(gpu_seconds=_J.gpu_seconds + bindparam("s"))
)


def record_gpu_seconds(
    session: Session, *, job_id: str, kind: str, worker: str, seconds: dict[int, float], ended: int
) -> None:
    """Add each item's model seconds (seq -> seconds) to the item and their sum to the job, and count them
    with the `ended` items for `worker`, all in the caller's transaction."""
    by_share: dict[float, list[int]] = defaultdict(list)
    for seq, share in seconds.items():
        by_share[round(share, SHARE_DECIMALS)].append(seq)
    for share, seqs in by_share.items():
        session.execute(_ADD_TO_ITEMS, {"job": job_id, "seqs": seqs, "share": share})
    # The job's figure is the sum of what its items were given.
    spent = sum(share * len(seqs) for share, seqs in by_share.items())
    if spent:
        session.execute(_ADD_TO_JOB, {"job": job_id, "s": spent})
    if spent or ended:
        count_for_worker(session, worker=worker, kind=kind, items=ended, gpu_seconds=spent)


def count_for_worker(session: Session, *, worker: str, kind: str, items: int, gpu_seconds: float) -> None:
    """Add to a worker's totals for a kind (its row made on its first call): one row per worker and kind, so
    workers never wait for one another's."""
    dialect = postgresql if is_postgresql(session) else sqlite
    totals = WorkerTotals.__table__
    insert = dialect.insert(totals).values(
        worker=worker, kind=kind, items_ended=items, gpu_seconds=gpu_seconds, seen_at=now()
    )
    session.execute(
        insert.on_conflict_do_update(
            index_elements=[totals.c.worker, totals.c.kind],
            set_={
                "items_ended": totals.c.items_ended + insert.excluded.items_ended,
                "gpu_seconds": totals.c.gpu_seconds + insert.excluded.gpu_seconds,
                "seen_at": insert.excluded.seen_at,
            },
        )
    )


def per_item(report: JobReport) -> float | None:
    """GPU-seconds per computed item that ended so far (outputs reused with --skip-existing cost none and
    are left out), or None before any."""
    computed = report.done - report.skipped - report.cancelled
    return report.gpu_seconds / computed if computed > 0 and report.gpu_seconds > 0 else None


def to_finish(report: JobReport) -> float | None:
    """GPU-seconds the job's items that have not ended will take at the cost per ended item so far: 0 for a
    job that ended, None before any item was computed."""
    left = report.total - report.done
    if report.final or left <= 0:
        return 0.0
    each = per_item(report)
    return each * left if each is not None else None
