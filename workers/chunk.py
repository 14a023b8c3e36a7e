"""The chunk loop: claim -> fetch and decode ahead -> micro-batches on the model -> upload -> record.

The loop runs on the thread that drives the model and only sequences the parts: the ledger (workers/ledger.py)
claims and records on the bookkeeping thread, the inputs (workers/prepare.py) are prepared on the I/O threads
ahead of the model, and the micro-batches (workers/batches.py) run on the model here. One bad item never fails
its neighbours; a fault of a service hands the chunk's unfinished items back to the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace

from jobs import errors
from jobs.lifecycle import JobKind
from jobs.state import ClaimedItem
from workers.batches import MicroBatches, Results
from workers.ledger import DB_ERRORS, ChunkProgress, Claim, Ledger, Tally
from workers.prepare import Inputs, Prepared
from workers.readahead import Fetch, Taken
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


class ChunkInterrupted(Exception):
    """The worker is stopping: the chunk's unfinished items were handed back to the queue."""


@dataclass
class ChunkOutcome(Tally):
    """What one run of a chunk did: what its ledger recorded, what it took from the read-ahead, and where
    its time went."""

    #: Claimed items whose inputs were prepared by the read-ahead of the chunk before (not fetched again).
    read_ahead: int = 0
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


def run_chunk(
    runtime: WorkerRuntime,
    kind: JobKind,
    job_id: str,
    start: int,
    stop: int,
    progress: Callable[[ChunkProgress], None] | None = None,
) -> ChunkOutcome:
    """Process the items with seq in [start, stop) of a job; raise errors.Transient to have it retried later.

    `progress` gets a report at most every `workers.ledger.PROGRESS_EVERY_S` seconds while results are
    recorded, and one when the chunk ends with items ended.
    """
    ledger = Ledger(runtime, kind, job_id, range(start, stop), progress)
    chunk = _Chunk(runtime, kind, job_id, start, stop, ledger)
    runtime.liveness.chunk_started(kind.value, job_id, start, stop, ledger.hand_back_stalled)
    try:
        chunk.run()
    finally:
        chunk.end()
        runtime.liveness.chunk_ended()
    return chunk.outcome


@dataclass(frozen=True)
class _Job:
    """What the loop runs a claimed chunk's items with."""

    claim: Claim
    inputs: Inputs
    batches: MicroBatches


class _Chunk:
    """One run of a chunk, on the thread that drives the model."""

    def __init__(
        self, runtime: WorkerRuntime, kind: JobKind, job_id: str, start: int, stop: int, ledger: Ledger
    ) -> None:
        self.rt = runtime
        self.settings = runtime.settings
        self.kind, self.job_id, self.start, self.stop = kind, job_id, start, stop
        self.ledger = ledger
        self.outcome = ChunkOutcome()
        self.began = time.perf_counter()
        #: What this chunk took from the read-ahead of the chunk before, and whether it read ahead itself.
        self.taken: Taken[Prepared] = Taken({})
        self.read_ahead_sent = False

    def run(self) -> None:
        """Claim, process and record the chunk; on a fault, hand what it holds back and raise."""
        try:
            claim = self.ledger.claim(window=self._first_window())
            if claim is None:  # refused: nothing of the job is touched
                return
            items = sorted([*claim.items, *self._take_read_ahead(claim.items)], key=lambda item: item.seq)
            if items and not claim.cancelled:
                job = self._job(claim)
                self._process(job, items)
                # With no queued item left in the job, no later chunk of it may come to this worker: what
                # this chunk claimed ahead runs now rather than wait for one.
                if self.rt.read_ahead.holds(self.job_id) and not self.ledger.has_queued_items():
                    self._process(job, self._take_read_ahead([]))
            self.ledger.finish(self.outcome.model_s)
        except DB_ERRORS as exc:
            self.ledger.release(self.outcome.model_s)  # now if the database is back, else once it is
            raise errors.DatabaseUnavailable(f"database error: {exc.__class__.__name__}: {exc}") from exc
        except ChunkInterrupted:
            self.ledger.release(self.outcome.model_s, stopping=True)
            raise
        except errors.Transient:
            self.ledger.release(self.outcome.model_s)
            raise

    def end(self) -> None:
        """Close the ledger, start the read-ahead's wait for the next chunk, and account for the chunk."""
        tally = self.ledger.close()
        self.rt.read_ahead.chunk_ended()
        o = self.outcome = replace(self.outcome, **asdict(tally))
        o.wall_s = time.perf_counter() - self.began
        o.read_ahead += self.taken.used
        if o.claimed:
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

    def _job(self, claim: Claim) -> _Job:
        """What the chunk runs its items with, from what the claim read of the job."""
        inputs = Inputs(
            self.rt,
            self.kind,
            self.job_id,
            params=claim.params,
            output_url=claim.output_url,
            reuse_outputs=claim.reuse_outputs,
        )
        return _Job(claim, inputs, MicroBatches(self.rt, self.kind, self.job_id, claim.output_url))

    def _take_read_ahead(self, claimed: list[ClaimedItem]) -> list[ClaimedItem]:
        """Take what the read-ahead holds for this chunk; return the items it claimed ahead for this worker,
        which the chunk holds and runs besides those it claimed."""
        self.outcome.read_ahead += self.taken.used
        self.taken = self.rt.read_ahead.take(self.job_id, self.kind.value, claimed)
        self.ledger.adopt(self.taken.owned)
        return self.taken.owned

    def _process(self, job: _Job, items: list[ClaimedItem]) -> None:
        # An item whose earlier attempt ended without a result may be what killed that worker: such items run
        # last, one at a time, each recorded before the next starts, so that only an item that kills its
        # worker uses up attempts and its neighbours are not quarantined with it.
        fresh = [item for item in items if item.attempts == 0]
        suspects = [item for item in items if item.attempts > 0]
        if fresh and not self._run_items(job, fresh, self.rt.max_batch(self.kind.value), isolated=False):
            return
        if suspects:
            log.info(
                "%d items of job %s were tried before without a result; running them one at a time",
                len(suspects),
                self.job_id,
                extra={"job_id": self.job_id},
            )
            self._run_items(job, suspects, 1, isolated=True)

    def _run_items(self, job: _Job, items: list[ClaimedItem], size: int, *, isolated: bool) -> bool:
        """Run items in micro-batches of `size`; False if the job was cancelled on the way.

        Inputs are fetched ahead of the model unless `isolated`, which also records each micro-batch before
        the next one starts; else a micro-batch is recorded while the next one runs (its uploads meanwhile).
        """
        lookahead = 0 if isolated else self._lookahead(size)
        fetches: dict[int, list[Fetch[Prepared]]] = {}  # by the position of their micro-batch
        counted_by: dict[int, Future[None]] = {}  # seq -> the commit of its attempt
        waiting: Results | None = None
        position = submitted = 0
        cancelled = False
        while position < len(items):
            if self.rt.stopping.is_set():
                if waiting is not None:
                    self.ledger.record(waiting, self.outcome.model_s)
                self.ledger.drain()
                raise ChunkInterrupted(self.job_id)
            batch_start, batch = position, items[position : position + size]
            position += len(batch)
            ahead = min(len(items), position + lookahead)
            self._fetch(job, items, submitted, ahead, size, fetches, counted_by)
            submitted = ahead
            if submitted == len(items) and not isolated:  # behind this chunk's fetches on the I/O threads
                self._read_ahead(job, size)
            # The attempts of these items are committed before the model sees them (poison accounting).
            waited = time.perf_counter()
            for counted in {counted_by.pop(item.seq) for item in batch if item.seq in counted_by}:
                counted.result()
            if self.ledger.cancel_requested():
                cancelled = True
                break
            self.ledger.reap()
            fetched = time.perf_counter()
            prepared = [p for fetch in fetches.pop(batch_start) for p in fetch.result()]
            self.rt.liveness.beat()
            ran = time.perf_counter()
            results = job.batches.run(prepared)
            self.rt.liveness.beat()
            self.outcome.bookkeeping_wait_s += fetched - waited
            self.outcome.input_wait_s += ran - fetched
            self.outcome.model_s += time.perf_counter() - ran
            if waiting is not None:
                self.ledger.record(waiting, self.outcome.model_s)
            waiting = results
            if isolated:
                self.ledger.record(waiting, self.outcome.model_s)
                self.ledger.drain()
                waiting = None
        for fetch in (fetch for group in fetches.values() for fetch in group):
            fetch.cancel()
        if waiting is not None:
            self.ledger.record(waiting, self.outcome.model_s)
        self.ledger.drain()
        return not cancelled

    def _fetch(
        self,
        job: _Job,
        items: list[ClaimedItem],
        begin: int,
        end: int,
        size: int,
        fetches: dict[int, list[Fetch[Prepared]]],
        counted_by: dict[int, Future[None]],
    ) -> None:
        """Count the attempts of items[begin:end] the claim did not count (and renew the leases when due),
        then hand those items to the I/O threads in groups, each within one micro-batch (keyed by its start).
        Items the read-ahead prepared are not fetched again."""
        starting = [item.seq for item in items[begin:end] if not item.counted]
        checkpoint = self.ledger.checkpoint(starting)
        if checkpoint is not None:
            counted_by.update(dict.fromkeys(starting, checkpoint))
        for batch_start, index, stop in self._groups(begin, end, size):
            fetch = self.taken.fetch(items[index:stop], self.rt.io_pool, job.inputs.prepare_group)
            fetches.setdefault(batch_start, []).append(fetch)

    def _read_ahead(self, job: _Job, size: int) -> None:
        """Once per chunk, have the job's next items claimed for this worker and prepared (at most the next
        chunk's first micro-batch; see workers/readahead.py); text-to-image items have no input to fetch."""
        if self.read_ahead_sent or not self.settings.read_ahead or self.rt.stopping.is_set():
            return
        if self.kind is JobKind.GENERATE:
            return
        self.read_ahead_sent = True

        def prepare(items: list[ClaimedItem]) -> None:
            groups = [items[index:stop] for _, index, stop in self._groups(0, len(items), size)]
            self.rt.read_ahead.prepare(
                self.job_id,
                self.kind.value,
                job.claim.priority,
                groups,
                self.rt.io_pool,
                job.inputs.prepare_group,
            )

        self.ledger.claim_ahead(min(size, self.stop - self.start), prepare)

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

    def _lookahead(self, size: int) -> int:
        """Items fetched ahead of the micro-batch the model runs."""
        return max(2 * size, self.settings.io_threads)

    def _first_window(self) -> int:
        """Items the chunk starts at once: its first micro-batch and the lookahead behind it."""
        size = self.rt.max_batch(self.kind.value)
        return size + self._lookahead(size)
