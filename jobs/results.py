"""A job's results file (`{output}/{job}/results.jsonl`): written when the job ends, tried again until it is.

Storage may be down when the last item of a job ends. Every try first takes the export for one lease
(`export_retry_at`), so that reconcilers of other workers leave it alone meanwhile; a try that fails records
why (`export_error`) and when to try again, after a backoff that doubles with each failure. The reconciler of
every worker and `ovis-batch reconcile` take up final jobs whose file is missing once that time has come, and
final jobs that never recorded a try (the process writing the file died) one lease after they ended.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update

from jobs.db import ended_jobs_where, session_scope
from jobs.export import write_results
from jobs.lifecycle import JobStatus
from jobs.models import Job
from jobs.settings import Settings
from jobs.state import now

log = logging.getLogger(__name__)

#: Backoff between failed tries of a results file: base * 2**(failures - 1) seconds, capped.
EXPORT_BACKOFF_BASE_S = 5.0
EXPORT_BACKOFF_CAP_S = 600.0
#: Results files one reconciler pass tries at most: while storage is down every try waits out the client's
#: retries, and the pass has leases to look after too.
EXPORTS_PER_PASS = 5
#: Characters of the failure kept for `status`.
ERROR_CHARS = 300

_FINAL = [status.value for status in JobStatus if status.final]


def export_backoff(failures: int) -> float:
    """Seconds between the `failures`-th failed try of a results file and the next try."""
    return min(EXPORT_BACKOFF_CAP_S, EXPORT_BACKOFF_BASE_S * 2 ** max(0, failures - 1))


def _due(t: datetime, lease_seconds: int) -> ColumnElement[bool]:
    """Final jobs without their results file whose next try has come."""
    return and_(
        Job.status.in_(_FINAL),
        Job.export_url.is_(None),
        or_(
            Job.export_retry_at <= t,
            and_(Job.export_retry_at.is_(None), Job.finished_at < t - timedelta(seconds=lease_seconds)),
        ),
    )


def _brief(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{exc.__class__.__name__}: {first}"[:ERROR_CHARS]


def _start_try(settings: Settings, job_id: str) -> bool:
    """Take the next try of a job's results file for one lease; False while another process holds it."""
    t = now()
    with session_scope(settings.resolved_database_url) as session:
        taken = session.execute(
            update(Job)
            .where(Job.id == job_id, or_(Job.export_retry_at.is_(None), Job.export_retry_at <= t))
            .values(export_retry_at=t + timedelta(seconds=settings.lease_seconds))
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(taken, "rowcount", 0))


def _record_failure(settings: Settings, job_id: str, exc: BaseException) -> float:
    """Record a failed try: why, and when the next one is due; return the backoff in seconds."""
    with session_scope(settings.resolved_database_url) as session:
        failures = 1 + (session.scalar(select(Job.export_failures).where(Job.id == job_id)) or 0)
        delay = export_backoff(failures)
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                export_failures=failures,
                export_error=_brief(exc),
                export_retry_at=now() + timedelta(seconds=delay),
            )
            .execution_options(synchronize_session=False)
        )
    return delay


def _record_success(settings: Settings, job_id: str) -> None:
    with session_scope(settings.resolved_database_url) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, or_(Job.export_retry_at.is_not(None), Job.export_error.is_not(None)))
            .values(export_retry_at=None, export_error=None)
            .execution_options(synchronize_session=False)
        )


def deliver_results(settings: Settings, job_id: str) -> str | None:
    """Write a final job's results file unless another process is writing it; return its URL, or None when
    it was not written now (a failure is recorded for the reconciler to try again, and logged)."""
    try:
        if not _start_try(settings, job_id):
            return None
    except Exception:  # the database is away: the reconciler finds the job without its file one lease later
        log.warning("results of job %s not written: the database is unavailable", job_id, exc_info=True)
        return None
    try:
        url = write_results(settings, job_id)
    except Exception as exc:
        try:
            delay = _record_failure(settings, job_id, exc)
        except Exception:
            log.warning("could not record the failed export of job %s", job_id, exc_info=True)
            delay = float(settings.lease_seconds)
        log.warning(
            "writing the results of job %s failed (%s); trying again in %.0fs",
            job_id,
            _brief(exc),
            delay,
            exc_info=True,
            extra={"job_id": job_id},
        )
        return None
    try:
        _record_success(settings, job_id)
    except Exception:  # the file and its URL are in place; only the last failure stays on the row
        log.warning("could not clear the export failure of job %s", job_id, exc_info=True)
    return url


def retry_exports(settings: Settings, limit: int = EXPORTS_PER_PASS) -> list[str]:
    """Write the results files of final jobs that are missing and due again; return the ids of the jobs whose
    file was written now."""
    due = ended_jobs_where(settings.resolved_database_url, _due(now(), settings.lease_seconds), limit)
    written = []
    for job_id in due:
        if deliver_results(settings, job_id) is not None:
            log.info("results of job %s written on a later try", job_id, extra={"job_id": job_id})
            written.append(job_id)
    return written
