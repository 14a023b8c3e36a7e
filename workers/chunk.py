"""The chunk pipeline: claim -> fetch and decode ahead -> micro-batches on the model -> upload -> record.

One bad item never fails its neighbours: fetch errors end only that item, a failing micro-batch is split
until the failing item stands alone, and out-of-memory halves the batch on the same worker.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

import storage
from gpu_model import BackendOutOfMemory, CaptionRequest, EditRequest, GenerateRequest
from jobs import errors
from jobs.broker import TASK_NAMES
from jobs.db import get_engine, session_scope
from jobs.inputs import read_allowed_input
from jobs.keys import output_key
from jobs.lifecycle import JobKind, JobStatus
from jobs.params import item_seed, resolve
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
from workers.images import decode_image, encode_png
from workers.readahead import Fetch, Taken
from workers.reuse import find_reusable, fingerprint, input_digest, model_identity
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

Request = CaptionRequest | GenerateRequest | EditRequest


class ChunkInterrupted(Exception):
    """The worker is stopping: the chunk's unfinished items were handed back to the queue."""


@dataclass
class ChunkOutcome:
    """What one run of a chunk did."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    #: Claimed items whose inputs were prepared by the read-ahead of the chunk before (not fetched again).
    read_ahead: int = 0
    final_status: JobStatus | None = None
    #: Where the chunk's time went on the thread that drives the model: in the backend, waiting for inputs
    #: to be fetched and decoded, and waiting for the attempts of the next items to be committed. A model
    #: that waits is a worker short of I/O threads or of database speed.
    wall_s: float = 0.0
    model_s: float = 0.0
    input_wait_s: float = 0.0
    bookkeeping_wait_s: float = 0.0

    def timings(self) -> dict[str, float]:
        """The time fields, rounded, for logs and task results."""
        return {
            name: round(getattr(self, name), 3)
            for name in ("wall_s", "model_s", "input_wait_s", "bookkeeping_wait_s")
        }


@dataclass
class _Work:
    item: ClaimedItem
    request: Request | None = None
    error: tuple[str, str] | None = None
    #: What the item's output is made from (workers.reuse), and an earlier output made from the same.
    fingerprint: str | None = None
    reused: str | None = None


@dataclass
class _Pending:
    """Results of a micro-batch waiting for their uploads before they are recorded."""

    outputs: dict[int, Future[str] | str] = field(default_factory=dict)
    failures: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: Outputs of earlier jobs the items take instead of running (`--skip-existing`).
    reused: dict[int, str] = field(default_factory=dict)
    fingerprints: dict[int, str] = field(default_factory=dict)


#: Leases are renewed before a micro-batch once this share of `lease_seconds` has passed since they were set.
LEASE_RENEW_SHARE = 0.1

#: The cancel flag is read before a micro-batch once this many seconds passed since the last read: before
#: every micro-batch of a real model, about every 0.2 s of short ones (a read costs a round trip to the
#: database, 5-12 ms on a loaded 2-core machine, against micro-batches of 10-160 ms in the pipeline bench).
CANCEL_CHECK_S = 0.2


#: What the database driver raises when the server is gone or the connection broke.
_DB_ERRORS = (OperationalError, DBAPIError)


def _close_quietly(connection: Connection | None) -> None:
    """Close a kept connection; one the server already dropped closes without a word."""
    if connection is not None:
        with contextlib.suppress(*_DB_ERRORS):
            connection.close()


class ChunkRun:
    """One chunk of one job on this worker."""

    def __init__(
        self,
        runtime: WorkerRuntime,
        kind: JobKind,
        job_id: str,
        start: int,
        stop: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.rt = runtime
        self.progress = progress
        self.settings = runtime.settings
        self.db = self.settings.resolved_database_url
        self.kind = kind
        self.job_id = job_id
        self.start, self.stop = start, stop
        self.outcome = ChunkOutcome()
        self.job_params: dict[str, Any] = {}
        self.output_url = ""
        self.priority = 0
        #: The job was cancelled when the chunk came: nothing runs, what it holds is cancelled.
        self.job_cancelled = False
        self.open: set[int] = set()  # claimed seqs not yet recorded
        self.started: set[int] = set()  # claimed seqs whose attempt this run counted
        # SQL bookkeeping (leases, attempts, results) runs in order on the runtime's one bookkeeping thread,
        # so the model never waits for a commit; `open` and `started` are only touched there or after _drain.
        self._records: list[Future[None]] = []
        self._reader: Connection | None = None
        self._writer: Connection | None = None
        #: When the leases of the claimed items were last set and the cancel flag last read (monotonic clock).
        self._leased_at = 0.0
        self._cancel_checked_at = -CANCEL_CHECK_S
        #: Backend defaults and job parameters, merged once per chunk (items may override them).
        self._base_params: dict[str, Any] = {}
        #: What this chunk took from the read-ahead of the chunk before, and whether it read ahead itself.
        self._taken: Taken[_Work] = Taken({})
        self._read_ahead_sent = False
        #: `--skip-existing`: items take earlier outputs with their fingerprint (workers.reuse).
        self.reuse_outputs = False
        self._model = model_identity(self.settings)
        # Read once per chunk, not once per item (the roots' default looks up the working directory).
        self.input_roots = tuple(self.settings.allowed_input_roots)
        self.s3 = self.settings.s3_options()

    # -- the whole chunk, top to bottom -------------------------------------------------------------------
    def run(self) -> ChunkOutcome:
        """Claim, process and record the chunk; raise errors.Transient to have it retried later."""
        started = time.perf_counter()
        try:
            return self._run()
        finally:
            self._drain(raise_errors=False)
            self._close_reader()
            self._close_writer()
            self.rt.read_ahead.chunk_ended()
            self.outcome.wall_s = time.perf_counter() - started
            self.outcome.read_ahead += self._taken.used
            if self.outcome.claimed:
                o = self.outcome
                log.info(
                    "job %s items %d-%d: %d claimed in %.2fs (%d read ahead); model %.2fs, waiting for "
                    "inputs %.2fs, for bookkeeping %.2fs",
                    self.job_id,
                    self.start,
                    self.stop,
                    o.claimed,
                    o.wall_s,
                    o.read_ahead,
                    o.model_s,
                    o.input_wait_s,
                    o.bookkeeping_wait_s,
                    extra={"job_id": self.job_id},
                )

    def _run(self) -> ChunkOutcome:
        try:
            items = self._claim()
            if items is None:  # refused: nothing of the job is touched
                return self.outcome
            items = sorted([*items, *self._take_read_ahead(items)], key=lambda item: item.seq)
            if items and not self.job_cancelled:
                self._process(items)
                # With no queued item left in the job, no later chunk of it may come to this worker: what
                # this chunk claimed ahead runs now rather than wait for one.
                if self.rt.read_ahead.holds(self.job_id) and not self._read(job_has_queued_items):
                    self._process(self._take_read_ahead([]))
            self._finish()
        except _DB_ERRORS as exc:
            self._release()  # when the database is back already; else the leases expire
            raise errors.DatabaseUnavailable(f"database error: {exc.__class__.__name__}: {exc}") from exc
        except (errors.Transient, ChunkInterrupted):
            self._release()
            raise
        return self.outcome

    def _claim(self) -> list[ClaimedItem] | None:
        """Claim the chunk's items; None when the message is refused (its task is of another kind than its
        job: a chunk sent by hand as `ovis.caption` for an edit job would record captions as edits)."""
        with self._bookkeeping() as session:
            job = job_for_chunk(session, job_id=self.job_id)
            if job is None:
                log.warning("chunk of unknown job %s dropped", self.job_id, extra={"job_id": self.job_id})
                return []
            if job.kind != self.kind.value:
                log.warning(
                    "chunk %s[%d:%d] dropped, no item touched: it came as a %s task for a job of kind %s, "
                    "whose chunks are %s tasks",
                    self.job_id,
                    self.start,
                    self.stop,
                    self.kind.value,
                    job.kind,
                    TASK_NAMES[JobKind(job.kind)],
                    extra={"job_id": self.job_id},
                )
                return None
            self.priority = job.priority
            if job.cancel_requested:
                self.job_cancelled = True
                self.outcome.cancelled += cancel_items(
                    session, job_id=self.job_id, seqs=list(range(self.start, self.stop))
                )
                return []
            self.job_params, self.output_url = dict(job.params), job.output_url
            self.reuse_outputs = bool(job.reuse_outputs)
            self._cancel_checked_at = time.monotonic()  # the flag was just read with the job
            self._leased_at = time.monotonic()
            items, leased = claim_items(
                session,
                job_id=self.job_id,
                start=self.start,
                stop=self.stop,
                worker=self.rt.name,
                lease_seconds=self.settings.lease_seconds,
                max_attempts=self.settings.max_attempts,
                starting_below=self.start + self._first_window(),
                job_queued=job.status == JobStatus.QUEUED.value,
                # Items read ahead by another worker are leased to it: only worth a query for the log.
                check_leased=log.isEnabledFor(logging.DEBUG),
            )
        if leased:  # read ahead by another worker, which runs them; or held by one that died
            log.debug(
                "items %d-%d of job %s are leased by another worker; the reconciler re-dispatches them "
                "if their lease expires",
                self.start,
                self.stop,
                self.job_id,
                extra={"job_id": self.job_id},
            )
        self.open = {item.seq for item in items}
        self.started = {item.seq for item in items if item.counted}
        self.outcome.claimed = len(items)
        return items

    def _take_read_ahead(self, claimed: list[ClaimedItem]) -> list[ClaimedItem]:
        """Take what the read-ahead holds for this chunk; return the items claimed ahead for this worker,
        which the chunk runs besides those it claimed."""
        self.outcome.read_ahead += self._taken.used
        self._taken = self.rt.read_ahead.take(self.job_id, self.kind.value, claimed)
        owned = self._taken.owned
        seqs = {item.seq for item in owned}
        self.open |= seqs
        self.started |= seqs
        self.outcome.claimed += len(seqs)
        return [] if self.job_cancelled else owned

    def _process(self, items: list[ClaimedItem]) -> None:
        # An item whose earlier attempt ended without a result may be what killed that worker: such items run
        # last, one at a time, each recorded before the next starts, so that only an item that kills its
        # worker uses up attempts and its neighbours are not quarantined with it.
        defaults = self.rt.info.defaults.get(self.kind.value, {})
        self._base_params = resolve(self.kind, self.job_params, None, defaults)
        fresh = [item for item in items if item.attempts == 0]
        suspects = [item for item in items if item.attempts > 0]
        if fresh and not self._run_items(fresh, self.rt.max_batch(self.kind.value), isolated=False):
            return
        if suspects:
            log.info(
                "%d items of job %s were tried before without a result; running them one at a time",
                len(suspects),
                self.job_id,
                extra={"job_id": self.job_id},
            )
            self._run_items(suspects, 1, isolated=True)

    def _run_items(self, items: list[ClaimedItem], size: int, *, isolated: bool) -> bool:
        """Run items in micro-batches of `size`; False if the job was cancelled on the way.

        Inputs are fetched ahead of the model unless `isolated`, which also records each micro-batch before
        the next one starts.
        """
        lookahead = 0 if isolated else self._lookahead(size)
        fetches: dict[int, list[Fetch[_Work]]] = {}
        waiting: _Pending | None = None
        position = submitted = 0
        cancelled = False
        counted_by: dict[int, Future[None]] = {}
        while position < len(items):
            if self.rt.stopping.is_set():
                log.info(
                    "worker stopping: handing %d items of job %s back",
                    len(self.open),
                    self.job_id,
                    extra={"job_id": self.job_id},
                )
                if waiting is not None:
                    self._record_later(waiting)
                self._drain()
                raise ChunkInterrupted(self.job_id)
            batch_start = position
            batch_items = items[position : position + size]
            position += len(batch_items)
            ahead = min(len(items), position + lookahead)
            self._start(items, submitted, ahead, size, fetches, counted_by)
            submitted = ahead
            if submitted == len(items) and not isolated:  # behind this chunk's fetches on the I/O threads
                self._read_ahead(size)
            # The attempts of these items are committed before the model sees them (poison accounting).
            waited = time.perf_counter()
            for counted in {counted_by.pop(item.seq) for item in batch_items if item.seq in counted_by}:
                counted.result()
            if self._cancel_flag():
                cancelled = True
                break
            self._reap()
            fetched = time.perf_counter()
            works = [work for group in fetches.pop(batch_start) for work in group.result()]
            ran = time.perf_counter()
            pending = _Pending(
                failures={w.item.seq: w.error for w in works if w.error},
                reused={w.item.seq: w.reused for w in works if w.reused is not None},
                fingerprints={w.item.seq: w.fingerprint for w in works if w.fingerprint is not None},
            )
            runnable = [w for w in works if w.request is not None and w.reused is None]
            if runnable:
                self._run_batch(runnable, pending)
            self.outcome.bookkeeping_wait_s += fetched - waited
            self.outcome.input_wait_s += ran - fetched
            self.outcome.model_s += time.perf_counter() - ran
            if waiting is not None:
                self._record_later(waiting)
            waiting = pending
            if isolated:
                self._record_later(waiting)
                self._drain()
                waiting = None
        for groups in fetches.values():
            for group in groups:
                group.cancel()
        if waiting is not None:
            self._record_later(waiting)
        self._drain()
        return not cancelled

    def _start(
        self,
        items: list[ClaimedItem],
        begin: int,
        end: int,
        size: int,
        fetches: dict[int, list[Fetch[_Work]]],
        counted_by: dict[int, Future[None]],
    ) -> None:
        """Before a micro-batch: count the attempts of items[begin:end] the claim did not count (and renew the
        leases when due), then hand those items to the I/O threads in groups, each within one micro-batch
        (keyed by its start). Items the read-ahead prepared are not fetched again."""
        starting = [item.seq for item in items[begin:end] if not item.counted]
        renew = self._lease_due()
        if starting or renew:
            checkpoint = self.rt.bookkeeper.submit(self._checkpoint, starting, renew)
            self._records.append(checkpoint)
            counted_by.update(dict.fromkeys(starting, checkpoint))
        for batch_start, index, stop in self._groups(begin, end, size):
            fetch = self._taken.fetch(items[index:stop], self.rt.io_pool, self._prepare_group)
            fetches.setdefault(batch_start, []).append(fetch)

    def _groups(self, begin: int, end: int, size: int) -> Iterator[tuple[int, int, int]]:
        """Positions [begin, end) cut in groups for the I/O threads, each within one micro-batch of `size`:
        (the micro-batch's start, the group's start, its stop)."""
        group = -(-size // max(1, self.settings.io_threads))
        index = begin
        while index < end:
            batch_start = index - index % size
            stop = min(end, batch_start + size, index + group)
            yield batch_start, index, stop
            index = stop

    def _read_ahead(self, size: int) -> None:
        """Once per chunk, have the job's next items prepared (see workers/readahead.py); text-to-image items
        have no input to fetch, so nothing is read ahead for them."""
        if self._read_ahead_sent or not self.settings.read_ahead or self.rt.stopping.is_set():
            return
        if self.kind is JobKind.GENERATE:
            return
        self._read_ahead_sent = True
        # On the bookkeeping thread, which owns the kept connection; drained with the chunk's records.
        self._records.append(self.rt.bookkeeper.submit(self._prepare_next, size))

    def _prepare_next(self, size: int) -> None:
        """Claim the job's next untouched items, at most the next chunk's first micro-batch (if chunks are
        smaller than micro-batches, one chunk), and hand them to the I/O threads; this worker's next chunk
        runs them (see workers/readahead.py). Best effort: a failure only costs the next chunk its head
        start."""
        try:
            with self._bookkeeping() as session:
                # The next two chunks' ranges at most: a chunk further on is not this worker's next.
                length = self.stop - self.start
                items = claim_next_items(
                    session,
                    job_id=self.job_id,
                    after=self.stop,
                    before=self.stop + 2 * length,
                    limit=min(size, length),
                    worker=self.rt.name,
                    lease_seconds=self.settings.lease_seconds,
                )
        except _DB_ERRORS as exc:  # the chunk's own bookkeeping reports the database
            log.debug("no read-ahead for job %s: %s", self.job_id, exc, extra={"job_id": self.job_id})
            return
        if not items:
            return
        groups = [items[index:stop] for _, index, stop in self._groups(0, len(items), size)]
        try:
            prepared = [(group, self.rt.io_pool.submit(self._prepare_group, group)) for group in groups]
        except RuntimeError:  # the I/O threads were shut down: the worker is stopping
            self.rt.give_back(self.job_id, self.kind.value, self.priority, items)
            return
        self.rt.read_ahead.hold(self.job_id, self.kind.value, prepared, owned=True, priority=self.priority)

    def _lookahead(self, size: int) -> int:
        """Items fetched ahead of the micro-batch the model runs."""
        return max(2 * size, self.settings.io_threads)

    def _first_window(self) -> int:
        """Items the chunk starts at once: its first micro-batch and the lookahead behind it."""
        size = self.rt.max_batch(self.kind.value)
        return size + self._lookahead(size)

    def _lease_due(self) -> bool:
        """Whether a meaningful share of the lease has passed since it was last set (then it is renewed)."""
        now = time.monotonic()
        if now - self._leased_at < self.settings.lease_seconds * LEASE_RENEW_SHARE:
            return False
        self._leased_at = now
        return True

    def _record_later(self, pending: _Pending) -> None:
        self._records.append(self.rt.bookkeeper.submit(self._record, pending))

    def _reap(self) -> None:
        """Surface a failed recording (database down) without waiting for the ones still running."""
        done = [future for future in self._records if future.done()]
        self._records = [future for future in self._records if not future.done()]
        for future in done:
            future.result()

    def _drain(self, *, raise_errors: bool = True) -> None:
        """Wait until every result handed to the bookkeeping thread is recorded."""
        records, self._records = self._records, []
        for future in records:
            try:
                future.result()
            except Exception:
                if raise_errors:
                    raise

    def _finish(self) -> None:
        with self._bookkeeping() as session:
            if self.open and cancel_requested(session, job_id=self.job_id):
                self.outcome.cancelled += cancel_items(session, job_id=self.job_id, seqs=sorted(self.open))
                self.open.clear()
            status = finalize_job(session, job_id=self.job_id)
        if status is not None:
            self.outcome.final_status = status
            log.info("job %s finished: %s", self.job_id, status.value, extra={"job_id": self.job_id})
            # A failed write is recorded on the job; the reconciler writes the file later.
            deliver_results(self.settings, self.job_id)

    def _release(self) -> None:
        self._drain(raise_errors=False)
        if not self.open:
            return
        # The chunk's message comes back for its own range; items claimed ahead outside it need their own. A
        # hand-back the database refuses is made by the runtime as soon as the database answers again.
        outside = [seq for seq in self.open if not self.start <= seq < self.stop]
        self.rt.hand_back(
            self.job_id, self.kind.value, self.priority, self.open, uncount=self.started, publish=outside
        )

    def _checkpoint(self, seqs: list[int], renew: bool) -> None:
        """Count an attempt for the items about to be fetched and, if `renew`, extend the lease of the items
        still open: one statement, committed before those items reach the model."""
        with self._bookkeeping() as session:
            checkpoint_items(
                session,
                job_id=self.job_id,
                worker=self.rt.name,
                starting=seqs,
                renewing=self.open if renew else (),
                lease_seconds=self.settings.lease_seconds,
            )
        self.started.update(seqs)

    @contextlib.contextmanager
    def _bookkeeping(self) -> Iterator[Session]:
        """A transaction on the connection the chunk keeps for its claim, its bookkeeping (on the bookkeeping
        thread) and its finish, which never overlap: no pool checkout, ping or reset per transaction. A broken
        connection is dropped and the next transaction opens another."""
        if self._writer is None:
            self._writer = get_engine(self.db).connect()
        try:
            with Session(bind=self._writer) as session, session.begin():
                yield session
        except _DB_ERRORS:
            self._close_writer()
            raise

    def _close_writer(self) -> None:
        _close_quietly(self._writer)
        self._writer = None

    def _cancel_flag(self) -> bool:
        """The job's cancel flag, read on the model's thread before a micro-batch when CANCEL_CHECK_S passed
        since the last read: one round trip on a connection the chunk keeps (autocommit: no transaction, no
        pool checkout, no ping)."""
        now = time.monotonic()
        if now - self._cancel_checked_at < CANCEL_CHECK_S:
            return False
        self._cancel_checked_at = now
        return self._read(cancel_requested)

    def _read(self, query: Callable[..., bool]) -> bool:
        """`query(connection, job_id=...)` on the connection the chunk keeps for reads on the model's thread:
        one round trip (autocommit: no transaction, no pool checkout, no ping). A broken connection is dropped
        and the next read opens another."""
        if self._reader is None:
            self._reader = get_engine(self.db).connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            return query(self._reader, job_id=self.job_id)
        except _DB_ERRORS:
            self._close_reader()
            raise

    def _close_reader(self) -> None:
        _close_quietly(self._reader)
        self._reader = None

    # -- inputs ------------------------------------------------------------------------------------------
    def _prepare_group(self, items: Sequence[ClaimedItem]) -> list[_Work]:
        """Prepare a few items in turn on one I/O thread: one task and one future per group, not per item;
        with `--skip-existing`, find earlier outputs made from the same (one query per group)."""
        works = [self._prepare(item) for item in items]
        prints = {work.fingerprint for work in works if work.fingerprint is not None}
        if self.reuse_outputs and prints:
            with session_scope(self.db) as session:
                found = find_reusable(
                    session,
                    job_id=self.job_id,
                    fingerprints=prints,
                    images=self.kind is not JobKind.CAPTION,
                    s3=self.s3,
                )
            for work in works:
                if work.fingerprint in found:
                    work.reused = found[work.fingerprint]
        return works

    def _prepare(self, item: ClaimedItem) -> _Work:
        """Fetch, decode and build the request of one item (runs on an I/O thread).

        Whatever goes wrong ends this item alone: bad input with its own code (one WARNING line), anything
        else as internal_error (an ERROR with the traceback). Only a transient fault is raised: the chunk is
        handed back and retried.
        """
        try:
            image, digest = (
                self._load_image(item.source) if self.kind is not JobKind.GENERATE else (None, None)
            )
            request = self._request(item, image)
            made_of = fingerprint(
                kind=self.kind.value,
                request=request,
                input_digest=digest,
                model=self._model,
                output_url=self.output_url,
            )
            return _Work(item, request=self.rt.backend.prepare(request), fingerprint=made_of)
        except errors.Transient:
            raise
        except errors.BadInput as exc:
            log.warning(
                "item %s of job %s failed: %s: %s",
                item.key,
                self.job_id,
                exc.error_code,
                exc,
                extra={"job_id": self.job_id, "item_id": item.key},
            )
            return _Work(item, error=(exc.error_code, str(exc)))
        except Exception as exc:  # MemoryError and RecursionError too: no input ends the chunk or the worker
            log.error(
                "item %s of job %s failed while its input was prepared",
                item.key,
                self.job_id,
                exc_info=True,
                extra={"job_id": self.job_id, "item_id": item.key},
            )
            detail = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
            return _Work(item, error=(errors.INTERNAL_ERROR, detail))

    def _load_image(self, url: str) -> tuple[Image.Image, str]:
        """The decoded input and a digest of its bytes (workers.reuse)."""
        # jobs.inputs reads plain objects and WebDataset tar members (`shard.tar#member@offset+size`).
        try:
            data = read_allowed_input(url, self.input_roots, self.s3, self.settings.max_image_bytes)
        except storage.ObjectNotFound:
            raise errors.InputMissing(f"{url} does not exist") from None
        except storage.StorageUnavailable as exc:
            raise errors.StorageUnavailable(str(exc)) from exc
        except storage.StorageError as exc:
            raise errors.InputMissing(f"{url} cannot be read: {exc}") from None
        image = decode_image(
            data, max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels
        )
        return image, input_digest(data)

    def _params(self, overrides: dict[str, Any] | None) -> dict[str, Any]:
        """The chunk's parameters with an item's overrides on top."""
        if not overrides:
            return self._base_params
        return resolve(self.kind, {}, overrides, self._base_params)

    def _request(self, item: ClaimedItem, image: Image.Image | None) -> Request:
        p = self._params(item.params)
        seed = (item.params or {}).get("seed")
        seed = int(seed) if seed is not None else item_seed(int(self.job_params.get("seed", 0)), item.key)
        if self.kind is JobKind.CAPTION:
            assert image is not None
            return CaptionRequest(
                image=image,
                prompt=item.text or p["prompt"],
                max_new_tokens=p["max_new_tokens"],
                temperature=float(p.get("temperature", 0.0)),
                seed=seed,
            )
        if self.kind is JobKind.GENERATE:
            return GenerateRequest(
                prompt=item.text,
                width=p["width"],
                height=p["height"],
                steps=p["steps"],
                seed=seed,
                txt_cfg=float(p["txt_cfg"]),
            )
        assert image is not None
        return EditRequest(
            image=image,
            instruction=item.text,
            steps=p["steps"],
            seed=seed,
            img_cfg=float(p["img_cfg"]),
            txt_cfg=float(p["txt_cfg"]),
        )

    # -- the model -------------------------------------------------------------------------------------
    def _call(self, requests: Sequence[Request]) -> Sequence[str | Image.Image]:
        backend = self.rt.backend
        results: Sequence[str | Image.Image]
        if self.kind is JobKind.CAPTION:
            results = backend.caption([r for r in requests if isinstance(r, CaptionRequest)])
        elif self.kind is JobKind.GENERATE:
            results = backend.generate([r for r in requests if isinstance(r, GenerateRequest)])
        else:
            results = backend.edit([r for r in requests if isinstance(r, EditRequest)])
        if len(results) != len(requests):
            raise RuntimeError(f"backend returned {len(results)} results for {len(requests)} requests")
        return results

    def _run_batch(self, works: list[_Work], pending: _Pending) -> None:
        try:
            results = self._call([w.request for w in works if w.request is not None])
        except BackendOutOfMemory as exc:
            if len(works) == 1:
                pending.failures[works[0].item.seq] = (
                    errors.OUT_OF_MEMORY,
                    f"out of memory at batch 1: {exc}",
                )
                return
            half = len(works) // 2
            log.warning(
                "out of memory at batch %d; retrying as %d + %d",
                len(works),
                half,
                len(works) - half,
                extra={"job_id": self.job_id},
            )
            self._run_batch(works[:half], pending)
            self._run_batch(works[half:], pending)
            return
        except errors.Transient:
            raise
        except Exception as exc:
            if len(works) > 1:  # find the item that fails by running each alone
                for work in works:
                    self._run_batch([work], pending)
                return
            seq = works[0].item.seq
            log.error(
                "item %s of job %s failed:\n%s",
                works[0].item.key,
                self.job_id,
                traceback.format_exc(),
                extra={"job_id": self.job_id, "item_id": works[0].item.key},
            )
            code = getattr(exc, "error_code", errors.INTERNAL_ERROR)
            pending.failures[seq] = (code, f"{exc.__class__.__name__}: {exc}")
            return
        for work, result in zip(works, results, strict=True):
            if isinstance(result, str):
                pending.outputs[work.item.seq] = result
            else:
                key = output_key(self.job_id, work.item.key, "png")
                pending.outputs[work.item.seq] = self.rt.io_pool.submit(self._upload, key, result)

    def _upload(self, key: str, image: Image.Image) -> str:
        try:
            return self.rt.store(self.output_url).write(key, encode_png(image), "image/png")
        except storage.StorageUnavailable as exc:
            raise errors.StorageUnavailable(str(exc)) from exc

    def _record(self, pending: _Pending) -> None:
        outputs: dict[int, str] = {}
        for seq, value in pending.outputs.items():
            try:
                outputs[seq] = value if isinstance(value, str) else value.result()
            except storage.StorageError as exc:  # refused for good (access, bucket): that item fails
                pending.failures[seq] = (exc.error_code, f"writing the output failed: {exc}")
        started = time.perf_counter()
        prints = pending.fingerprints
        with self._bookkeeping() as session:
            self.outcome.succeeded += record_successes(
                session, job_id=self.job_id, outputs=outputs, fingerprints=prints
            )
            self.outcome.succeeded += record_successes(
                session, job_id=self.job_id, outputs=pending.reused, fingerprints=prints, reused=True
            )
            self.outcome.failed += record_failures(session, job_id=self.job_id, failures=pending.failures)
        self.open -= set(outputs) | set(pending.reused) | set(pending.failures)
        if self.progress is not None:
            self.progress(self.outcome.succeeded + self.outcome.failed, self.outcome.claimed)
        log.debug(
            "recorded %d results in %.3fs",
            len(outputs) + len(pending.failures),
            time.perf_counter() - started,
            extra={"job_id": self.job_id},
        )


def run_chunk(
    runtime: WorkerRuntime,
    kind: JobKind,
    job_id: str,
    start: int,
    stop: int,
    progress: Callable[[int, int], None] | None = None,
) -> ChunkOutcome:
    """Process the items with seq in [start, stop) of a job; `progress(done, claimed)` after each record."""
    return ChunkRun(runtime, kind, job_id, start, stop, progress).run()
