"""The reconciler: the database is the record of truth, so work the broker lost is found there and re-sent.

- Items whose lease expired (their worker died) go back to the queue and are dispatched again.
- Queued items of unfinished jobs are dispatched again when their kind's queue is empty and no message is
  in flight: the broker lost them (Redis restarted without persistence). A duplicate is harmless: claims are
  conditional, finished items are skipped.
- Jobs whose items have all ended but were not finalized (a crash in between) are finalized.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import and_, select

from jobs.api import Client
from jobs.broker import queue_for
from jobs.db import session_scope
from jobs.dispatch import CeleryDispatcher
from jobs.export import write_results
from jobs.lifecycle import ItemStatus, JobKind, JobStatus
from jobs.models import Item, Job
from jobs.queues import queue_depths, unacked_count
from jobs.settings import Settings
from jobs.state import finalize_job, now, transition

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    """What one pass did."""

    expired: int = 0
    redispatched: int = 0
    finalized: list[str] = field(default_factory=list)


def reconcile(settings: Settings, dispatcher: CeleryDispatcher | None = None) -> ReconcileReport:
    """One pass over unfinished jobs."""
    dispatcher = dispatcher or CeleryDispatcher(settings)
    client = Client(settings, dispatcher)
    report = ReconcileReport()
    open_statuses = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]
    with session_scope(settings.resolved_database_url) as session:
        jobs = [
            (job.id, JobKind(job.kind))
            for job in session.scalars(select(Job).where(Job.status.in_(open_statuses)))
        ]
    if not jobs:
        return report
    depths = queue_depths(dispatcher.app, settings)
    in_flight = unacked_count(dispatcher.app)
    for job_id, kind in jobs:
        with session_scope(settings.resolved_database_url) as session:
            expired = transition(
                session,
                job_id=job_id,
                where=and_(Item.lease_until < now()),
                source=ItemStatus.RUNNING,
                target=ItemStatus.QUEUED,
                values={"lease_until": None},
            )
            status = finalize_job(session, job_id=job_id)
            queued = session.scalar(select(Job.n_queued).where(Job.id == job_id)) or 0
        report.expired += expired
        if status is not None:
            report.finalized.append(job_id)
            write_results(settings, job_id)
            continue
        idle = depths.get(queue_for(settings, kind), 0) == 0 and in_flight == 0
        if queued and (expired or idle):
            sent = client.dispatch_items(job_id, (ItemStatus.QUEUED,))
            report.redispatched += sent
            log.info(
                "re-dispatched %d items of job %s (%d leases expired)",
                sent,
                job_id,
                expired,
                extra={"job_id": job_id},
            )
    return report
