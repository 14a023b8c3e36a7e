"""The reconciler: the database is the record of truth, so work the broker lost is found there and re-sent.

- Items whose lease expired (their worker died) go back to the queue and are dispatched again.
- Queued items of unfinished jobs are dispatched again when their kind's queue is empty and no message was
  taken by a worker within the last lease: the broker lost them (Redis restarted without persistence), or a
  dead worker holds them unacknowledged. A duplicate is harmless: claims are conditional, finished items are
  skipped.
- Jobs whose items have all ended but were not finalized (a crash in between) are finalized.
- Jobs whose counters look wrong are recounted from their items (jobs/repair.py), and ended if every item
  has: counters that do not add up to the total, running items counted where none is left, or queued items
  counted where none is found to send again. These checks read the job row and the status index only; the
  recount reads every item of the job, so it runs for those jobs alone.
- Final jobs whose results file is missing (storage was down when they ended) get it, with backoff (see
  jobs/results.py).
- Jobs that ended with a notification URL get their notification, tried again with backoff until delivered
  or given up (see jobs/notify.py): the state is on the job row, so no restart of any process loses one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy import exists, literal, or_, select

from jobs.api import Client
from jobs.broker import queue_for
from jobs.db import session_scope
from jobs.dispatch import CeleryDispatcher
from jobs.lifecycle import ItemStatus, JobKind, JobStatus
from jobs.models import Item, Job
from jobs.notify import deliver_notifications
from jobs.queues import queue_depths
from jobs.repair import repair_job
from jobs.results import deliver_results, retry_exports
from jobs.settings import Settings
from jobs.state import expire_leases, finalize_job

log = logging.getLogger(__name__)


def _recently_taken(app: Celery, max_age_s: float) -> int:
    """Messages workers took in the last `max_age_s` seconds and have not acknowledged (Redis).

    An older unacknowledged message either runs a chunk, whose items are then leased rather than queued, or
    was held by a worker that died (a chunk waiting for its retry, say): Redis gives that back only after the
    visibility timeout, hours later. Neither stands for queued items, so neither holds back a re-dispatch.
    """
    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        client = getattr(channel, "client", None)
        if client is None or not hasattr(channel, "unacked_index_key"):
            return 0
        return int(client.zcount(channel.unacked_index_key, time.time() - max_age_s, "+inf"))


@dataclass
class ReconcileReport:
    """What one pass did."""

    expired: int = 0
    redispatched: int = 0
    finalized: list[str] = field(default_factory=list)
    #: Jobs whose results file was written on a later try.
    exported: list[str] = field(default_factory=list)
    #: Jobs whose counters were recounted from their items and changed (see jobs/repair.py).
    repaired: list[str] = field(default_factory=list)
    #: Jobs whose notification was delivered now (see jobs/notify.py).
    notified: list[str] = field(default_factory=list)


# The state inline, not bound: the planner must see it to use the partial status index.
_RUNNING_ITEM = exists().where(
    Item.job_id == Job.id, Item.status == literal(ItemStatus.RUNNING.value, literal_execute=True)
)
#: Counters that contradict themselves, or running items counted where the status index has none: read in one
#: statement, so that no worker moves items in between.
_COUNTERS_WRONG = or_(
    Job.n_queued + Job.n_running + Job.n_succeeded + Job.n_failed + Job.n_cancelled != Job.total,
    *(
        counter < 0
        for counter in (Job.n_queued, Job.n_running, Job.n_succeeded, Job.n_failed, Job.n_cancelled)
    ),
    (Job.n_running > 0) & ~_RUNNING_ITEM,
)


def reconcile(settings: Settings, dispatcher: CeleryDispatcher | None = None) -> ReconcileReport:
    """One pass over unfinished jobs, then over final jobs whose results file is missing, then over the
    notifications due."""
    dispatcher = dispatcher or CeleryDispatcher(settings)
    client = Client(settings, dispatcher)
    report = ReconcileReport()
    open_statuses = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]
    with session_scope(settings.resolved_database_url) as session:
        jobs = [
            (job.id, JobKind(job.kind))
            # A job still being submitted has no chunk out yet: its submission publishes them all at its end.
            for job in session.scalars(
                select(Job).where(Job.status.in_(open_statuses), Job.submitting.is_(False))
            )
        ]
    try:
        if jobs:
            _reconcile_open(settings, dispatcher, client, jobs, report)
    finally:
        # Results files need the database and storage only: a broker that is away does not hold them back;
        # notifications come after them, to carry the results file's URL.
        report.exported = retry_exports(settings)
        report.notified = deliver_notifications(settings)
    return report


def _reconcile_open(
    settings: Settings,
    dispatcher: CeleryDispatcher,
    client: Client,
    jobs: list[tuple[str, JobKind]],
    report: ReconcileReport,
) -> None:
    depths = queue_depths(dispatcher.app, settings)
    in_flight = _recently_taken(dispatcher.app, settings.lease_seconds)
    for job_id, kind in jobs:
        with session_scope(settings.resolved_database_url) as session:
            expired = expire_leases(session, job_id=job_id)
            status = finalize_job(session, job_id=job_id)
            queued, wrong = session.execute(
                select(Job.n_queued, _COUNTERS_WRONG).where(Job.id == job_id)
            ).one()
        report.expired += expired
        if status is not None:
            report.finalized.append(job_id)
            deliver_results(settings, job_id)
            continue
        if wrong and _repair(settings, job_id, report):
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
            if not sent:  # queued items counted, none found
                _repair(settings, job_id, report)


def _repair(settings: Settings, job_id: str, report: ReconcileReport) -> bool:
    """Recount a job whose counters look wrong; True if that ended it (its results file is written then)."""
    repaired = repair_job(settings, job_id)
    if repaired.changed:
        report.repaired.append(job_id)
        log.warning("reconciler: %s", repaired.describe(), extra={"job_id": job_id})
    if repaired.ended:
        report.finalized.append(job_id)
    return repaired.ended
