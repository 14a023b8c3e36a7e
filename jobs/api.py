"""The producer's Python API; the CLI is a thin layer over it.

    from jobs.api import Client
    from jobs.lifecycle import JobKind
    from jobs.settings import Settings

    client = Client(Settings())                      # OVIS_BATCH_* from the environment, else embedded
    job_id = client.submit(JobKind.CAPTION, "photos/", notify_url="https://example.com/hooks/ovis")
    report = client.wait(job_id, timeout=3600)       # the final JobReport; TimeoutError if not ended
    for row in client.iter_results(job_id):          # the rows of results.jsonl, in source order
        print(row["id"], row["status"], row["output"])

README (Python API) has the whole example.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, select, true

from jobs.db import ensure_schema, session_scope
from jobs.dispatch import PUBLISH_BATCH, CeleryDispatcher, Dispatcher, send_chunks
from jobs.errors import InvalidParameters, JobNotFound
from jobs.export import ExportOptions, export_job, iter_rows
from jobs.failures import ERRORS_SCANNED, errors_by_code
from jobs.lifecycle import ItemStatus, JobKind, JobStatus
from jobs.models import Item, Job
from jobs.notify import NotifyReport
from jobs.results import deliver_results
from jobs.settings import Settings
from jobs.sources import Columns, iter_source
from jobs.state import cancel_items, finalize_job, now, reopen_job, transition
from jobs.submit import ItemSpec, submit_job
from jobs.webhook import check_notify_url

#: The shortest job id prefix `resolve` accepts: as much as the progress bar shows.
SHORT_ID_CHARS = 8
#: Candidates an ambiguous prefix names at most.
CANDIDATES_SHOWN = 5
#: What a job id or a prefix of one is made of (jobs.submit.new_job_id: 32 hex digits).
_HEX_DIGITS = re.compile(r"[0-9a-f]*")


@dataclass(frozen=True)
class JobReport:
    """A job's state, read from its row: O(1) whatever the number of items."""

    id: str
    kind: str
    status: str
    priority: int
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    output_url: str
    export_url: str | None
    source: str
    #: Items given an earlier job's identical output (`--skip-existing`), counted in `succeeded` too.
    skipped: int = 0
    #: The submission is still reading the source: `total` grows and the job cannot end yet.
    submitting: bool = False
    #: The job ended but its results file is not written yet (storage was down): the reconciler retries it.
    export_pending: bool = False
    #: Why the last try of the results file failed, while it is pending.
    export_error: str | None = None
    #: Model time spent on the job's items so far (jobs/cost.py).
    gpu_seconds: float = 0.0
    #: The notification sent when the job ends, and how its delivery went; None without a URL.
    notification: NotifyReport | None = None

    @property
    def done(self) -> int:
        """Items that have ended, whatever their outcome."""
        return self.succeeded + self.failed + self.cancelled

    @property
    def final(self) -> bool:
        """Whether the job has ended."""
        return JobStatus(self.status).final

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; times in ISO 8601 in UTC with their offset (`+00:00`), whatever the database."""
        values = asdict(self)
        for name in ("created_at", "started_at", "finished_at"):
            values[name] = _utc_iso(values[name])
        values["notification"] = self.notification.as_dict() if self.notification else None
        return values


def _utc_iso(moment: datetime | None) -> str | None:
    """`moment` in ISO 8601 in UTC with its offset. SQLite gives times back without their zone: they were
    written in UTC; PostgreSQL gives them in the session's zone, converted here."""
    if moment is None:
        return None
    return (moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _report(job: Job) -> JobReport:
    return JobReport(
        id=job.id,
        kind=job.kind,
        status=job.status,
        priority=job.priority,
        total=job.total,
        queued=job.n_queued,
        running=job.n_running,
        succeeded=job.n_succeeded,
        failed=job.n_failed,
        cancelled=job.n_cancelled,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        output_url=job.output_url,
        export_url=job.export_url,
        source=job.source,
        skipped=job.n_skipped,
        submitting=job.submitting,
        export_pending=JobStatus(job.status).final and job.export_url is None,
        export_error=job.export_error if job.export_url is None else None,
        gpu_seconds=job.gpu_seconds or 0.0,
        notification=NotifyReport.of(job),
    )


class Client:
    """Submit, watch and manage jobs."""

    def __init__(self, settings: Settings, dispatcher: Dispatcher | None = None) -> None:
        self.settings = settings
        self.db = settings.resolved_database_url
        self._dispatcher = dispatcher
        if settings.embedded:
            ensure_schema(self.db)

    @property
    def dispatcher(self) -> Dispatcher:
        """Where chunks are sent (Celery unless given)."""
        if self._dispatcher is None:
            self._dispatcher = CeleryDispatcher(self.settings)
        return self._dispatcher

    def submit(
        self,
        kind: JobKind,
        source: str,
        *,
        params: dict[str, Any] | None = None,
        priority: int = 0,
        output_url: str | None = None,
        skip_existing: bool = False,
        columns: Columns | None = None,
        notify_url: str | None = None,
        job_id: str | None = None,
    ) -> str:
        """Submit every item of `source` (folder, S3 prefix, prompt file, manifest or tar shards); return
        the job id (`job_id` if given, else a new one). `skip_existing` keeps outputs earlier jobs made for
        the same ids, not recomputing them. `notify_url` (default: OVIS_BATCH_NOTIFY_URL) gets a signed POST
        when the job ends (jobs.notify)."""
        self._notify_url(notify_url)  # refused before the source is read
        items = iter_source(kind, source, self.settings.s3_options(), columns)
        return self.submit_items(
            kind,
            items,
            params=params,
            priority=priority,
            source=source,
            output_url=output_url,
            skip_existing=skip_existing,
            source_options=asdict(columns) if columns else None,
            notify_url=notify_url,
            job_id=job_id,
        )

    def submit_items(
        self,
        kind: JobKind,
        items: Iterable[ItemSpec],
        *,
        params: dict[str, Any] | None = None,
        priority: int = 0,
        source: str = "",
        output_url: str | None = None,
        skip_existing: bool = False,
        source_options: dict[str, Any] | None = None,
        notify_url: str | None = None,
        job_id: str | None = None,
    ) -> str:
        """Submit items given directly; return the job id (`job_id` if given, else a new one)."""
        return submit_job(
            self.settings,
            kind=kind,
            items=items,
            params=params or {},
            dispatcher=self.dispatcher,
            source=source,
            priority=priority,
            output_url=output_url,
            skip_existing=skip_existing,
            source_options=source_options,
            notify_url=self._notify_url(notify_url),
            job_id=job_id,
        )

    def _notify_url(self, given: str | None) -> str | None:
        """The job's notification URL: the one given, else the settings' default; checked (http(s) only, a
        host OVIS_BATCH_NOTIFY_ALLOWED_HOSTS allows)."""
        url = given if given is not None else self.settings.notify_url
        return check_notify_url(url, self.settings.notify_allowed_hosts) if url.strip() else None

    def status(self, job_id: str) -> JobReport:
        """The job's counters and state."""
        with session_scope(self.db) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            return _report(job)

    def resolve(self, job_id: str) -> str:
        """The full id of the job `job_id` names: the id itself, or a unique prefix of at least 8 characters
        (what the progress bar shows). JobNotFound when none matches; InvalidParameters, naming the
        candidates, when several do."""
        text = job_id.strip().lower()
        if not _HEX_DIGITS.fullmatch(text):
            # Refused before any query: a job id is hex digits, and PostgreSQL refuses a NUL in text.
            raise InvalidParameters(
                f"job id {job_id[:80]!r} is not a job id: give its hex digits (0-9, a-f), the whole id or at "
                f"least its first {SHORT_ID_CHARS}"
            )
        if len(text) < SHORT_ID_CHARS:
            raise InvalidParameters(
                f"job id {job_id!r} is too short: give the whole id or at least its first {SHORT_ID_CHARS} "
                "characters"
            )
        query = select(Job.id).where(Job.id.startswith(text, autoescape=True)).order_by(Job.id)
        with session_scope(self.db) as session:
            if session.get(Job, text) is not None:
                return text
            found = list(session.scalars(query.limit(CANDIDATES_SHOWN + 1)))
        if not found:
            raise JobNotFound(f"no job {job_id}")
        if len(found) > 1:
            shown = ", ".join(found[:CANDIDATES_SHOWN]) + (", ..." if len(found) > CANDIDATES_SHOWN else "")
            raise InvalidParameters(f"job id {job_id!r} is ambiguous: it begins {shown}; give more of it")
        return found[0]

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        poll_s: float = 1.0,
        on_progress: Callable[[JobReport], None] | None = None,
    ) -> JobReport:
        """Block until the job has ended and return its final report (its counters, the results file's URL);
        TimeoutError when it has not ended within `timeout` seconds (None: wait for ever). The job's row is
        read every `poll_s` seconds; `on_progress` gets each report read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            report = self.status(job_id)
            if on_progress is not None:
                on_progress(report)
            if report.final:
                return report
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} has not ended within {timeout:g}s ({report.status})")
            pause = poll_s if deadline is None else min(poll_s, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    def iter_results(self, job_id: str, statuses: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
        """The job's items as the rows of its results.jsonl (id, input, prompt, output, status, error, ...),
        in source order, streamed from the database: also while the job runs, as far as it has come.
        `statuses` keeps only items in those states."""
        self.status(job_id)  # JobNotFound now, not at the first row
        return iter_rows(self.settings, job_id, tuple(statuses))

    def errors_by_code(self, job_id: str, limit: int = ERRORS_SCANNED) -> dict[str, int]:
        """Failed items per error code, over at most `limit` failed items (through the status index, which
        holds failed items only, so the cost follows the failures, not the job's size)."""
        return errors_by_code(self.db, job_id, limit)

    def list(
        self,
        *,
        status: str | Sequence[str] | None = None,
        kind: str | None = None,
        since: datetime | None = None,
        source: str | None = None,
        limit: int = 50,
    ) -> list[JobReport]:
        """Newest jobs first, filtered by state(s), kind, creation time and a part of the source."""
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if status:
            query = query.where(Job.status.in_([status] if isinstance(status, str) else list(status)))
        if kind:
            query = query.where(Job.kind == kind)
        if since is not None:
            query = query.where(Job.created_at >= since)
        if source:
            query = query.where(Job.source.contains(source, autoescape=True))
        with session_scope(self.db) as session:
            return [_report(job) for job in session.scalars(query)]

    def cancel(self, job_id: str) -> JobReport:
        """Stop the job: queued items end cancelled now, running ones at their next micro-batch."""
        with session_scope(self.db) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            finished = None
            if not JobStatus(job.status).final:
                job.cancel_requested = True
                session.flush()
                cancel_items(session, job_id=job_id)
                finished = finalize_job(session, job_id=job_id)
        if finished is not None:  # nothing was running: no worker will write the results
            deliver_results(self.settings, job_id)
        return self.status(job_id)

    def export(
        self,
        job_id: str,
        out: str | None,
        fmt: str = "jsonl",
        *,
        statuses: Sequence[str] = (),
        column: str | None = None,
        presign: int | None = None,
    ) -> int:
        """Export the job (also while it runs) to a path or storage URL; return how many items were written.

        Formats: jsonl, parquet, txt (a caption file beside each image; `out` None) and manifest (the input
        manifest with the output as a column). `presign` adds a link to each output in S3, valid that many
        seconds (`output_https`)."""
        self.status(job_id)
        options = ExportOptions(fmt=fmt, statuses=tuple(statuses), column=column, presign=presign)
        return export_job(self.settings, job_id, out, options)

    def resume(self, job_id: str, *, release_running: bool = False) -> int:
        """Re-dispatch every item that has not ended (after a crash or a lost broker); return how many.

        Items whose lease expired go back to the queue first. Items still leased to a worker are left to it
        (their chunk skips them) unless `release_running`, for when their workers are known to be gone."""
        with session_scope(self.db) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            lease_over = true() if release_running else Item.lease_until < now()
            transition(
                session,
                job_id=job_id,
                where=lease_over,
                source=ItemStatus.RUNNING,
                target=ItemStatus.QUEUED,
                values={"lease_until": None},
            )
            if job.cancel_requested:
                transition(
                    session,
                    job_id=job_id,
                    where=true(),
                    source=ItemStatus.CANCELLED,
                    target=ItemStatus.QUEUED,
                    values={"finished_at": None},
                )
            reopen_job(session, job_id=job_id)
        return self.dispatch_items(job_id, (ItemStatus.QUEUED, ItemStatus.RUNNING))

    def retry_failed(self, job_id: str, codes: Sequence[str] = ()) -> int:
        """Queue the failed items (those with one of `codes`, if given) again as a new attempt, with a fresh
        attempts budget; succeeded items are untouched. Return how many."""
        with session_scope(self.db) as session:
            if session.get(Job, job_id) is None:
                raise JobNotFound(f"no job {job_id}")
            moved = transition(
                session,
                job_id=job_id,
                where=Item.error_code.in_(list(codes)) if codes else true(),
                source=ItemStatus.FAILED,
                target=ItemStatus.QUEUED,
                values={"attempts": 0, "error_code": None, "error_message": None, "finished_at": None},
            )
            reopen_job(session, job_id=job_id)
        if moved:
            self.dispatch_items(job_id, (ItemStatus.QUEUED,))
        return moved

    def dispatch_items(self, job_id: str, statuses: tuple[ItemStatus, ...]) -> int:
        """Dispatch the job's items in `statuses` as chunks; return how many items."""
        with session_scope(self.db) as session:
            job = session.get(Job, job_id)
            assert job is not None
            kind, priority = JobKind(job.kind), job.priority
            seqs = session.scalars(
                select(Item.seq)
                .where(and_(Item.job_id == job_id, Item.status.in_([s.value for s in statuses])))
                .order_by(Item.seq)
                .execution_options(yield_per=10_000)
            )
            count = 0
            ranges: list[tuple[int, int]] = []
            for start, stop, n in _ranges(seqs, self.settings.chunk_size):
                ranges.append((start, stop))
                count += n
                if len(ranges) == PUBLISH_BATCH:
                    send_chunks(self.dispatcher, kind, job_id, ranges, priority)
                    ranges = []
            send_chunks(self.dispatcher, kind, job_id, ranges, priority)
        return count


def _ranges(seqs: Iterable[int], size: int) -> Iterator[tuple[int, int, int]]:
    """Group sorted seqs into [start, stop) ranges holding at most `size` of them."""
    start = last = None
    count = 0
    for seq in seqs:
        if start is None:
            start = seq
        elif count == size:
            assert last is not None
            yield start, last + 1, count
            start, count = seq, 0
        last = seq
        count += 1
    if start is not None and last is not None:
        yield start, last + 1, count
