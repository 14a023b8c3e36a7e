"""A chunk's ledger: its items' rows in SQL, written in order on the worker's one bookkeeping thread.

The claim, the attempts counted and leases renewed before items reach the model, the results of each
micro-batch, items claimed ahead, the finish and a hand-back all run on `WorkerRuntime.bookkeeper`, on one
connection the chunk keeps there, so that the model never waits for a commit. What the chunk holds (the items
not yet recorded, those whose attempt it counted, its counts) is state of that thread alone: it lives in
`_Book`, which only `Ledger` reaches, and only by handing a call to that thread. The model's thread reads the
job (its cancel flag, whether items are still queued) on a connection of its own, in autocommit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from jobs.broker import TASK_NAMES
from jobs.db import get_engine
from jobs.lifecycle import JobKind, JobStatus
from jobs.models import Job
from jobs.results import deliver_results
from jobs.state import (
    ClaimedItem,
    cancel_items,
    cancel_requested,
    checkpoint_items,
    claim_items,
    claim_next_items,
    finalize_job,
    job_for_chunk,
    job_has_queued_items,
    record_failures,
    record_successes,
)
from workers.batches import Results
from workers.chunk_progress import ChunkProgress as ChunkProgress
from workers.cost import record_model_time
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: What the database driver raises when the server is gone or the connection broke.
DB_ERRORS = (OperationalError, DBAPIError)

#: Leases are renewed before a micro-batch once this share of `lease_seconds` has passed since they were set.
LEASE_RENEW_SHARE = 0.1

#: The cancel flag is read before a micro-batch once this many seconds passed since the last read: before
#: every micro-batch of a real model, a few times a second for short ones, whose pace a round trip to the
#: database per micro-batch would set (bench/pipeline_overhead.py).
CANCEL_CHECK_S = 0.2

#: How long the watchdog waits for the bookkeeping thread to hand a stalled chunk's items back.
STALL_HAND_BACK_S = 30.0

#: Least seconds between two progress reports of a chunk; its end makes one whatever the time.
PROGRESS_EVERY_S = 1.0


@dataclass(frozen=True)
class Claim:
    """What a chunk got: its items, and what it needs of the job to run them."""

    items: list[ClaimedItem]
    params: dict[str, Any] = field(default_factory=dict)
    output_url: str = ""
    priority: int = 0
    #: `--skip-existing`: items take earlier outputs with their fingerprint (workers/reuse.py).
    reuse_outputs: bool = False
    #: The job was cancelled when the chunk came: nothing runs, what the chunk holds is cancelled.
    cancelled: bool = False


@dataclass
class Tally:
    """What the ledger recorded for a chunk."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    final_status: JobStatus | None = None


def _close_quietly(connection: Connection | None) -> None:
    """Close a kept connection; one the server already dropped closes without a word."""
    if connection is not None:
        with contextlib.suppress(*DB_ERRORS):
            connection.close()


class Ledger:
    """A chunk's rows in SQL, as the chunk loop on the model's thread reaches them.

    Writes are handed to the bookkeeping thread in call order: those the loop goes on without return their
    future and are awaited by `drain`; `claim`, `finish`, `release` and `close` wait. Reads of the job run on
    the caller's thread.
    """

    def __init__(
        self,
        runtime: WorkerRuntime,
        kind: JobKind,
        job_id: str,
        seqs: range,
        progress: Callable[[ChunkProgress], None] | None = None,
    ) -> None:
        """The ledger of the chunk of `job_id` over `seqs`; `progress` gets its reports."""
        self._executor = runtime.bookkeeper
        self._book = _Book(runtime, kind, job_id, seqs, progress)
        self._job_id = job_id
        self._db = runtime.settings.resolved_database_url
        self._renew_s = runtime.settings.lease_seconds * LEASE_RENEW_SHARE
        self._pending: list[Future[Any]] = []
        self._reader: Connection | None = None
        #: When the leases were last set and the cancel flag last read (monotonic clock).
        self._leased_at = 0.0
        self._cancel_checked_at = -CANCEL_CHECK_S

    # -- writes, on the bookkeeping thread -----------------------------------------------------------------
    def claim(self, window: int) -> Claim | None:
        """Claim the chunk's items, the attempts of those in its first `window` seqs counted at once; None
        when the chunk is refused (see `_Book.claim`)."""
        # The claim sets the leases and reads the cancel flag with the job.
        self._leased_at = self._cancel_checked_at = time.monotonic()
        return self._executor.submit(self._book.claim, window).result()

    def adopt(self, items: Sequence[ClaimedItem]) -> None:
        """Hold items claimed ahead for this worker, their attempt counted, besides the chunk's own."""
        if items:
            self._later(self._book.adopt, list(items))

    def checkpoint(self, seqs: list[int]) -> Future[None] | None:
        """Count an attempt for items about to be fetched and, when due, renew the leases of the items the
        chunk holds; the future of that commit, which those items wait for before they reach the model."""
        renew = time.monotonic() - self._leased_at >= self._renew_s
        if renew:
            self._leased_at = time.monotonic()
        if not seqs and not renew:
            return None
        return self._later(self._book.checkpoint, seqs, renew)

    def record(self, results: Results, model_s: float) -> None:
        """Record a micro-batch's results once their uploads end (`model_s` so far, for progress)."""
        self._later(self._book.record, results, model_s)

    def claim_ahead(self, limit: int, then: Callable[[list[ClaimedItem]], None]) -> None:
        """Claim up to `limit` of the job's next untouched items for this worker and give them to `then` on
        the bookkeeping thread (see workers/readahead.py)."""
        self._later(self._book.claim_ahead, limit, then)

    def finish(self, model_s: float) -> None:
        """End the chunk: cancel what it holds of a cancelled job, finalize the job, and deliver its results
        file if it ended."""
        self._executor.submit(self._book.finish, model_s).result()

    def release(self, model_s: float, *, stopping: bool = False) -> None:
        """Hand the items the chunk still holds back to the queue (a fault, or the worker `stopping`)."""
        self._executor.submit(self._book.release, model_s, stopping).result()

    def hand_back_stalled(self, in_model: frozenset[int], timeout: float = STALL_HAND_BACK_S) -> None:
        """From the watchdog's thread: hand every item the chunk holds back and publish them again, the
        attempts it counted taken back except for the items in the model when it stalled. TimeoutError when
        the bookkeeping thread does not get to it in `timeout` seconds."""
        self._executor.submit(self._book.hand_back_stalled, in_model).result(timeout)

    def reap(self) -> None:
        """Raise the error of a write that failed (the database is down) without waiting for the others."""
        done = [future for future in self._pending if future.done()]
        self._pending = [future for future in self._pending if not future.done()]
        for future in done:
            future.result()

    def drain(self, *, raise_errors: bool = True) -> None:
        """Wait until every write handed to the bookkeeping thread is committed."""
        pending, self._pending = self._pending, []
        for future in pending:
            try:
                future.result()
            except Exception:
                if raise_errors:
                    raise

    def close(self) -> Tally:
        """Wait for the writes, close the connections the chunk kept and say what the ledger recorded."""
        self.drain(raise_errors=False)
        _close_quietly(self._reader)
        self._reader = None
        return self._executor.submit(self._book.close).result()

    def _later(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future = self._executor.submit(call, *args, **kwargs)
        self._pending.append(future)
        return future

    # -- reads, on the model's thread -----------------------------------------------------------------------
    def cancel_requested(self) -> bool:
        """The job's cancel flag, read when CANCEL_CHECK_S passed since the last read (else False)."""
        now = time.monotonic()
        if now - self._cancel_checked_at < CANCEL_CHECK_S:
            return False
        self._cancel_checked_at = now
        return self._read(cancel_requested)

    def has_queued_items(self) -> bool:
        """Whether the job has queued items, or its submission may still add some."""
        return self._read(job_has_queued_items)

    def _read(self, query: Callable[..., bool]) -> bool:
        """`query(connection, job_id=...)` on the connection the chunk keeps for reads on the model's thread:
        one round trip (autocommit: no transaction, no pool checkout, no ping). A broken connection is dropped
        and the next read opens another."""
        if self._reader is None:
            self._reader = get_engine(self._db).connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            return query(self._reader, job_id=self._job_id)
        except DB_ERRORS:
            _close_quietly(self._reader)
            self._reader = None
            raise


@dataclass
class _Book:
    """The ledger's state and its transactions, used on the bookkeeping thread alone (through `Ledger`)."""

    rt: WorkerRuntime
    kind: JobKind
    job_id: str
    seqs: range
    progress: Callable[[ChunkProgress], None] | None
    priority: int = 0
    tally: Tally = field(default_factory=Tally)
    #: Held seqs not yet recorded, and those whose attempt this chunk counted.
    open: set[int] = field(default_factory=set)
    started: set[int] = field(default_factory=set)
    writer: Connection | None = None
    began: float = field(default_factory=time.perf_counter)
    reported_at: float = field(default_factory=time.perf_counter)

    def claim(self, window: int) -> Claim | None:
        """Claim the chunk's items; None when the message is refused (its task is of another kind than its
        job: a chunk sent by hand as `ovis.caption` for an edit job would record captions as edits)."""
        extra = {"job_id": self.job_id}
        with self._transaction() as session:
            job = job_for_chunk(session, job_id=self.job_id)
            if job is None:
                log.warning("chunk of unknown job %s dropped", self.job_id, extra=extra)
                return Claim([])
            if job.kind != self.kind.value:
                log.warning(
                    "chunk %s[%d:%d] dropped, no item touched: it came as a %s task for a job of kind %s, "
                    "whose chunks are %s tasks",
                    self.job_id,
                    self.seqs.start,
                    self.seqs.stop,
                    self.kind.value,
                    job.kind,
                    TASK_NAMES[JobKind(job.kind)],
                    extra=extra,
                )
                return None
            self.priority = job.priority
            if job.cancel_requested:
                self.tally.cancelled += cancel_items(session, job_id=self.job_id, seqs=list(self.seqs))
                return Claim([], priority=job.priority, cancelled=True)
            items, leased = claim_items(
                session,
                job_id=self.job_id,
                start=self.seqs.start,
                stop=self.seqs.stop,
                worker=self.rt.name,
                lease_seconds=self.rt.settings.lease_seconds,
                max_attempts=self.rt.settings.max_attempts,
                starting_below=self.seqs.start + window,
                job_queued=job.status == JobStatus.QUEUED.value,
                # Items read ahead by another worker are leased to it: only worth a query for the log.
                check_leased=log.isEnabledFor(logging.DEBUG),
            )
        if leased:  # read ahead by another worker, which runs them; or held by one that died
            log.debug(
                "items %d-%d of job %s are leased by another worker; the reconciler re-dispatches them "
                "if their lease expires",
                self.seqs.start,
                self.seqs.stop,
                self.job_id,
                extra=extra,
            )
        self.open = {item.seq for item in items}
        self.started = {item.seq for item in items if item.counted}
        self.tally.claimed = len(items)
        return Claim(
            items, dict(job.params), job.output_url, job.priority, reuse_outputs=bool(job.reuse_outputs)
        )

    def adopt(self, items: list[ClaimedItem]) -> None:
        seqs = {item.seq for item in items}
        self.open |= seqs
        self.started |= seqs
        self.tally.claimed += len(seqs)

    def checkpoint(self, seqs: list[int], renew: bool) -> None:
        """Count an attempt for `seqs` and, if `renew`, extend the lease of the items still open: one
        statement, committed before those items reach the model."""
        with self._transaction() as session:
            checkpoint_items(
                session,
                job_id=self.job_id,
                worker=self.rt.name,
                starting=seqs,
                renewing=self.open if renew else (),
                lease_seconds=self.rt.settings.lease_seconds,
            )
        self.started.update(seqs)

    def record(self, results: Results, model_s: float) -> None:
        outputs, failures = results.settle(self.job_id)
        started = time.perf_counter()
        prints, made = results.fingerprints, results.provenance
        with self._transaction() as session:
            ended = self.tally.succeeded + self.tally.failed
            self.tally.succeeded += record_successes(
                session, job_id=self.job_id, outputs=outputs, fingerprints=prints, provenance=made
            )
            self.tally.succeeded += record_successes(
                session,
                job_id=self.job_id,
                outputs=results.reused,
                fingerprints=prints,
                provenance=made,
                reused=True,
            )
            self.tally.failed += record_failures(session, job_id=self.job_id, failures=failures)
            ended = self.tally.succeeded + self.tally.failed - ended
            spent = results.gpu_seconds
            record_model_time(
                session, job_id=self.job_id, kind=self.kind.value, gpu_seconds=spent, ended=ended
            )
            due = time.perf_counter() - self.reported_at >= PROGRESS_EVERY_S
            report = self._report(session, model_s) if due else None
        self.open -= set(outputs) | set(results.reused) | set(failures)
        self._send(report)
        log.debug(
            "recorded %d results in %.3fs",
            len(outputs) + len(failures),
            time.perf_counter() - started,
            extra={"job_id": self.job_id},
        )

    def claim_ahead(self, limit: int, then: Callable[[list[ClaimedItem]], None]) -> None:
        """Best effort: a failure only costs the next chunk its head start."""
        try:
            with self._transaction() as session:
                # The next two chunks' ranges at most: a chunk further on is not this worker's next.
                items = claim_next_items(
                    session,
                    job_id=self.job_id,
                    after=self.seqs.stop,
                    before=self.seqs.stop + 2 * len(self.seqs),
                    limit=limit,
                    worker=self.rt.name,
                    lease_seconds=self.rt.settings.lease_seconds,
                )
        except DB_ERRORS as exc:  # the chunk's own bookkeeping reports the database
            log.debug("no read-ahead for job %s: %s", self.job_id, exc, extra={"job_id": self.job_id})
            return
        if items:
            then(items)

    def finish(self, model_s: float) -> None:
        with self._transaction() as session:
            if self.open and cancel_requested(session, job_id=self.job_id):
                self.tally.cancelled += cancel_items(session, job_id=self.job_id, seqs=sorted(self.open))
                self.open.clear()
            status = finalize_job(session, job_id=self.job_id)
            report = self._report(session, model_s) if self._final_report_due() else None
        self._send(report)
        if status is not None:
            self.tally.final_status = status
            log.info("job %s finished: %s", self.job_id, status.value, extra={"job_id": self.job_id})
            # A failed write is recorded on the job; the reconciler writes the file later.
            deliver_results(self.rt.settings, self.job_id)

    def release(self, model_s: float, stopping: bool) -> None:
        if not self.open:
            return
        if stopping:
            log.info(
                "worker stopping: handing %d items of job %s back",
                len(self.open),
                self.job_id,
                extra={"job_id": self.job_id},
            )
        # The chunk's message comes back for its own range; items claimed ahead outside it need their own. A
        # hand-back the database refuses is made by the runtime as soon as the database answers again.
        outside = [seq for seq in self.open if seq not in self.seqs]
        handed = self.rt.hand_back(
            self.job_id, self.kind.value, self.priority, self.open, uncount=self.started, publish=outside
        )
        self.open.clear()
        if handed and self._final_report_due():  # the database answers: the chunk's last report
            report = None
            with contextlib.suppress(*DB_ERRORS), self._transaction() as session:
                report = self._report(session, model_s)
            self._send(report)

    def hand_back_stalled(self, in_model: frozenset[int]) -> None:
        held = sorted(self.open)
        self.rt.hand_back(
            self.job_id, self.kind.value, self.priority, held, uncount=self.started - in_model, publish=held
        )
        self.open.clear()

    def close(self) -> Tally:
        _close_quietly(self.writer)
        self.writer = None
        return self.tally

    def _final_report_due(self) -> bool:
        """Whether the chunk's end makes a progress report: it does whenever the chunk ended items."""
        ended = self.tally.succeeded + self.tally.failed + self.tally.cancelled
        return self.progress is not None and ended > 0

    def _report(self, session: Session, model_s: float) -> ChunkProgress | None:
        """The progress report, with the job's counters read in `session`; None without `progress`."""
        if self.progress is None:
            return None
        self.reported_at = time.perf_counter()
        counters = select(Job.total, Job.n_succeeded, Job.n_failed, Job.n_cancelled).where(
            Job.id == self.job_id
        )
        row = session.execute(counters).one_or_none()
        total, succeeded, failed, cancelled = row if row is not None else (0, 0, 0, 0)
        return ChunkProgress(
            job_id=self.job_id,
            kind=self.kind.value,
            start=self.seqs.start,
            stop=self.seqs.stop,
            claimed=self.tally.claimed,
            succeeded=self.tally.succeeded,
            failed=self.tally.failed,
            cancelled=self.tally.cancelled,
            model_s=round(model_s, 3),
            elapsed_s=round(self.reported_at - self.began, 3),
            job_items=total,
            job_done=succeeded + failed + cancelled,
        )

    def _send(self, report: ChunkProgress | None) -> None:
        if report is not None and self.progress is not None:
            self.progress(report)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Session]:
        """A transaction on the connection the chunk keeps on this thread: no pool checkout, ping or reset per
        transaction. A broken connection is dropped and the next transaction opens another. Each commit is
        progress of the chunk (workers/health.py)."""
        if self.writer is None:
            self.writer = get_engine(self.rt.settings.resolved_database_url).connect()
        try:
            with Session(bind=self.writer) as session, session.begin():
                yield session
        except DB_ERRORS:
            _close_quietly(self.writer)
            self.writer = None
            raise
        self.rt.liveness.beat()
