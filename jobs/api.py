"""The producer's Python API; the CLI is a thin layer over it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, literal, select, true

from jobs.db import ensure_schema, session_scope
from jobs.dispatch import PUBLISH_BATCH, CeleryDispatcher, Dispatcher, send_chunks
from jobs.errors import JobNotFound
from jobs.export import ExportOptions, export_job
from jobs.lifecycle import ItemStatus, JobKind, JobStatus
from jobs.models import Item, Job
from jobs.results import deliver_results
from jobs.settings import Settings
from jobs.sources import Columns, iter_source
from jobs.state import cancel_items, finalize_job, now, reopen_job, transition
from jobs.submit import ItemSpec, submit_job

#: Failed items read at most to count failures by error code.
ERRORS_SCANNED = 100_000


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

    @property
    def done(self) -> int:
        """Items that have ended, whatever their outcome."""
        return self.succeeded + self.failed + self.cancelled

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        values = asdict(self)
        for name in ("created_at", "started_at", "finished_at"):
            values[name] = values[name].isoformat() if values[name] else None
        return values


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
    ) -> str:
        """Submit every item of `source` (folder, S3 prefix, prompt file, manifest or tar shards); return
        the job id. `skip_existing` keeps outputs earlier jobs made for the same ids, not recomputing them."""
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
    ) -> str:
        """Submit items given directly; return the job id."""
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
        )

    def status(self, job_id: str) -> JobReport:
        """The job's counters and state."""
        with session_scope(self.db) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            return _report(job)

    def errors_by_code(self, job_id: str, limit: int = ERRORS_SCANNED) -> dict[str, int]:
        """Failed items per error code, over at most `limit` failed items (through the status index, which
        holds failed items only, so the cost follows the failures, not the job's size)."""
        # The state inline, not bound: the planner must see it to use the partial status index.
        failed_state = literal(ItemStatus.FAILED.value, literal_execute=True)
        failed = (
            select(Item.error_code)
            .where(Item.job_id == job_id, Item.status == failed_state)
            .limit(limit)
            .subquery()
        )
        with session_scope(self.db) as session:
            rows = session.execute(select(failed.c.error_code, func.count()).group_by(failed.c.error_code))
            return {code or "unknown": count for code, count in rows}

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
    ) -> int:
        """Export the job (also while it runs) to a path or storage URL; return how many items were written.

        Formats: jsonl, parquet, txt (a caption file beside each image; `out` None) and manifest (the input
        manifest with the output as a column)."""
        self.status(job_id)
        options = ExportOptions(fmt=fmt, statuses=tuple(statuses), column=column)
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
