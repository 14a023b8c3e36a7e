"""Notifications: a signed POST to the job's URL when it ends, tried again until delivered or given up.

- Every time a job ends (succeeded, partial, failed or cancelled) and it has a URL, `finalize_job` arms its
  notification in the same statement: state `pending`, a new delivery id, no attempt yet.
- Every reconciler pass (each worker's, and `ovis-batch reconcile`) sends the pending notifications that are
  due, once the job's results file is written (or its writing failed once: the body says it is pending). An
  attempt is taken by a conditional UPDATE that counts it and leases it, so one process sends it at a time,
  and a process that dies while sending leaves it to the next pass after the lease: a restart loses none.
- A 2xx answer delivers it. Network errors, 429 and 5xx are tried again after a backoff that doubles (the
  receiver's Retry-After is honoured up to the cap), up to `notify_max_attempts`; any other answer (3xx: no
  redirect is followed; 4xx) gives up at once. What happened stays on the job row, which `status` shows.

The body is JSON (`payload`); how it is sent and signed, and what an answer means, is jobs/webhook.py.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, and_, case, or_, update

from jobs.db import ended_jobs_where, session_scope
from jobs.failures import errors_by_code
from jobs.lifecycle import JobStatus
from jobs.models import Job
from jobs.settings import Settings
from jobs.state_moves import JOBS, now
from jobs.webhook import EVENT, Attempt, backoff, post, refused_host, request_headers, shown_url

log = logging.getLogger(__name__)

#: Notifications one reconciler pass sends at most: an unreachable receiver costs a timeout each.
NOTIFICATIONS_PER_PASS = 10
#: Seconds an attempt holds its notification beyond the timeout, before another process may take it over.
ATTEMPT_GRACE_S = 30.0

_FINAL = [status.value for status in JobStatus if status.final]


class NotifyState(StrEnum):
    """Where the notification of a job's last ending is."""

    #: Armed when the job ended; sent by the next reconciler pass, again after a retryable failure.
    PENDING = "pending"
    #: The receiver answered 2xx.
    DELIVERED = "delivered"
    #: Given up: a 3xx or 4xx answer (429 aside), or `notify_max_attempts` attempts failed.
    FAILED = "failed"


# -- what is sent ------------------------------------------------------------------------------------------
def _aware(moment: datetime | None) -> datetime | None:
    """A time read from the database as UTC (SQLite gives it back without its zone)."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    aware = _aware(moment)
    return aware.isoformat() if aware else None


def payload(job: Job, errors: dict[str, int]) -> dict[str, Any]:
    """The notification's JSON body for a job that ended."""
    return {
        "event": EVENT,
        "delivery_id": job.notify_delivery_id,
        "job_id": job.id,
        "kind": job.kind,
        "status": job.status,
        "counters": {
            "total": job.total,
            "succeeded": job.n_succeeded,
            "failed": job.n_failed,
            "cancelled": job.n_cancelled,
            "skipped": job.n_skipped,
        },
        "errors": errors,
        "outputs_url": f"{job.output_url.rstrip('/')}/{job.id}/",
        "results_url": job.export_url,
        "results_pending": job.export_url is None,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "gpu_seconds": round(job.gpu_seconds or 0.0, 3),
    }


# -- delivery, from the reconciler -------------------------------------------------------------------------
def _due(t: datetime, lease_seconds: int) -> ColumnElement[bool]:
    """Pending notifications of final jobs whose attempt is due, once the results file is settled: written,
    its writing failed once (the body says it is pending), or the job ended a lease ago (the process writing
    it died)."""
    return and_(
        Job.notify_state == NotifyState.PENDING.value,
        Job.status.in_(_FINAL),
        or_(Job.notify_retry_at.is_(None), Job.notify_retry_at <= t),
        or_(
            Job.export_url.is_not(None),
            Job.export_failures > 0,
            Job.finished_at < t - timedelta(seconds=lease_seconds),
        ),
    )


def _take(settings: Settings, job_id: str) -> tuple[str, int] | None:
    """Count and lease the next attempt of a job's notification; its delivery id and the attempt's number, or
    None when it is not due or another process holds it."""
    t = now()
    hold = timedelta(seconds=settings.notify_timeout_s + ATTEMPT_GRACE_S)
    with session_scope(settings.resolved_database_url) as session:
        row = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.notify_state == NotifyState.PENDING.value,
                or_(Job.notify_retry_at.is_(None), Job.notify_retry_at <= t),
            )
            .values(notify_retry_at=t + hold, notify_attempts=Job.notify_attempts + 1)
            .returning(Job.notify_delivery_id, Job.notify_attempts)
            .execution_options(synchronize_session=False)
        ).first()
    if row is None or row[0] is None:
        return None
    return str(row[0]), int(row[1])


def _record(settings: Settings, job_id: str, delivery_id: str, attempt: int, outcome: Attempt) -> NotifyState:
    """Record how an attempt went on the job (unless the job ended again meanwhile: a new notification)."""
    values: dict[str, Any] = {"notify_last_status": outcome.status, "notify_error": outcome.error}
    if outcome.delivered:
        state = NotifyState.DELIVERED
        values |= {"notified_at": now(), "notify_retry_at": None}
    elif outcome.retryable and attempt < settings.notify_max_attempts:
        state = NotifyState.PENDING
        delay = backoff(attempt, settings.notify_backoff_s, outcome.retry_after)
        values["notify_retry_at"] = now() + timedelta(seconds=delay)
    else:
        state = NotifyState.FAILED
        values["notify_retry_at"] = None
    values["notify_state"] = state.value
    with session_scope(settings.resolved_database_url) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.notify_delivery_id == delivery_id)
            .values(values)
            .execution_options(synchronize_session=False)
        )
    return state


def deliver_notification(settings: Settings, job_id: str) -> NotifyState | None:
    """Make the next attempt of a job's notification if it is due and no other process holds it; return its
    state after the attempt, or None when none was made."""
    taken = _take(settings, job_id)
    if taken is None:
        return None
    delivery_id, attempt = taken
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        if job is None or job.notify_url is None:
            return None
        session.expunge(job)
    errors = errors_by_code(settings.resolved_database_url, job_id) if job.n_failed else {}
    body = json.dumps(payload(job, errors), separators=(",", ":")).encode()
    secret = settings.notify_secret.get_secret_value() if settings.notify_secret else None
    headers = request_headers(body, delivery_id, attempt, secret)
    # The hosts allowed are checked again at sending: the job may have been submitted under another list.
    outcome = refused_host(job.notify_url, settings.notify_allowed_hosts) or post(
        job.notify_url, body, headers, settings.notify_timeout_s
    )
    state = _record(settings, job_id, delivery_id, attempt, outcome)
    fields = {"job_id": job_id, "delivery_id": delivery_id, "attempt": attempt}
    where = shown_url(job.notify_url)
    if state is NotifyState.DELIVERED:
        log.info("notified %s of the end of job %s (%s)", where, job_id, outcome.describe(), extra=fields)
    elif state is NotifyState.PENDING:
        log.warning(
            "notifying %s of the end of job %s failed (%s, attempt %d); trying again later",
            where,
            job_id,
            outcome.describe(),
            attempt,
            extra=fields,
        )
    else:
        log.warning(
            "gave up notifying %s of the end of job %s: %s after %d attempt(s)",
            where,
            job_id,
            outcome.describe(),
            attempt,
            extra=fields,
        )
    return state


def deliver_notifications(settings: Settings, limit: int = NOTIFICATIONS_PER_PASS) -> list[str]:
    """Make the due attempts of pending notifications (at most `limit`); return the ids of the jobs whose
    notification was delivered now."""
    due = ended_jobs_where(settings.resolved_database_url, _due(now(), settings.lease_seconds), limit)
    return [job_id for job_id in due if deliver_notification(settings, job_id) is NotifyState.DELIVERED]


def arm_values(delivery_id: Any) -> dict[str, Any]:
    """What a job's row takes in the statement that ends it (`finalize_job`): a new pending notification with
    a new delivery id if it has a URL."""
    has_url = JOBS.c.notify_url.is_not(None)
    return {
        "notify_state": case((has_url, NotifyState.PENDING.value), else_=None),
        "notify_delivery_id": case((has_url, delivery_id), else_=None),
        "notify_attempts": 0,
        "notify_last_status": None,
        "notify_error": None,
        "notify_retry_at": None,
        "notified_at": None,
    }


def new_delivery_id() -> str:
    """A delivery id: 32 hex digits."""
    return uuid.uuid4().hex


# -- what `status` shows -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class NotifyReport:
    """A job's notification as `status` shows it."""

    url: str
    state: str | None
    attempts: int
    last_status: int | None
    error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    delivery_id: str | None

    @classmethod
    def of(cls, job: Job) -> NotifyReport | None:
        """The job's notification; None when it has no URL."""
        if job.notify_url is None:
            return None
        return cls(
            url=shown_url(job.notify_url),
            state=job.notify_state,
            attempts=job.notify_attempts or 0,
            last_status=job.notify_last_status,
            error=job.notify_error,
            next_attempt_at=_aware(job.notify_retry_at),
            delivered_at=_aware(job.notified_at),
            delivery_id=job.notify_delivery_id,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "url": self.url,
            "state": self.state,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "error": self.error,
            "next_attempt_at": _iso(self.next_attempt_at),
            "delivered_at": _iso(self.delivered_at),
            "delivery_id": self.delivery_id,
        }

    def describe(self) -> str:
        """One line: what happened to the notification, or when it goes."""
        last = f"HTTP {self.last_status}" if self.last_status is not None else (self.error or "no answer")
        tries = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        if self.state is None:
            return f"to {self.url} when the job ends"
        if self.state == NotifyState.DELIVERED.value:
            return f"delivered to {self.url} at {_iso(self.delivered_at)} ({last}, {tries})"
        if self.state == NotifyState.FAILED.value:
            return f"not delivered to {self.url}: gave up after {tries}, the last: {last}"
        if self.attempts == 0:
            return f"pending to {self.url} (sent by the next reconciler pass)"
        after = _iso(self.next_attempt_at)
        return f"pending to {self.url}: {tries} failed, the last: {last}; next at {after}"
