"""The producer's Python API; the CLI is a thin layer over it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, true

from jobs.db import ensure_schema, session_scope
from jobs.dispatch import CeleryDispatcher, Dispatcher
from jobs.errors import JobNotFound
from jobs.export import write_local
from jobs.lifecycle import ItemStatus, JobKind, JobStatus
from jobs.models import Item, Job
from jobs.settings import Settings
from jobs.sources import iter_source
from jobs.state import cancel_items, finalize_job, reopen_job, transition
from jobs.submit import ItemSpec, submit_job


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
    ) -> str:
        """Submit every item of `source` (folder, S3 prefix, prompt file or manifest); return the job id."""
        items = iter_source(kind, source, self.settings.s3_options())
        return self.submit_items(
            kind, items, params=params, priority=priority, source=source, output_url=output_url
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
        )

    def status(self, job_id: str) -> JobReport:
        """The job's counters and state."""
        with session_scope(self.db) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            return _report(job)

    def errors_by_code(self, job_id: str) -> dict[str, int]:
        """Failed items per error code (reads only the failed items, through the status index)."""
        with session_scope(self.db) as session:
            rows = session.execute(
                select(Item.error_code, func.count())
                .where(Item.job_id == job_id, Item.status == ItemStatus.FAILED.value)
                .group_by(Item.error_code)
            )
            return {code or "unknown": count for code, count in rows}

    def list(self, *, status: str | None = None, kind: str | None = None, limit: int = 50) -> list[JobReport]:
        """Newest jobs first, optionally filtered."""
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if status:
            query = query.where(Job.status == status)
        if kind:
            query = query.where(Job.kind == kind)
        with session_scope(self.db) as session:
            return [_report(job) for job in session.scalars(query)]

    def cancel(self, job_id: str) -> JobReport:
        """Stop the job: queued items end cancelled now, running ones at their next micro-batch."""
        with session_scope(self.db) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            if not JobStatus(job.status).final:
                job.cancel_requested = True
                session.flush()
                cancel_items(session, job_id=job_id)
                finalize_job(session, job_id=job_id)
        return self.status(job_id)

    def export(self, job_id: str, path: str, fmt: str = "jsonl") -> int:
        """Write the job's rows to a local file (also while it runs); return how many."""
        self.status(job_id)
        return write_local(self.settings, job_id, path, fmt)

    def resume(self, job_id: str) -> int:
        """Re-dispatch every item that has not ended (after a crash or a lost broker); return how many."""
        with session_scope(self.db) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
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

    def retry_failed(self, job_id: str) -> int:
        """Queue the failed items again as a new attempt; return how many."""
        with session_scope(self.db) as session:
            if session.get(Job, job_id) is None:
                raise JobNotFound(f"no job {job_id}")
            moved = transition(
                session,
                job_id=job_id,
                where=true(),
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
            for start, stop, n in _ranges(seqs, self.settings.chunk_size):
                self.dispatcher.send_chunk(kind, job_id, start, stop, priority)
                count += n
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
