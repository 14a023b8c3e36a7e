"""Submission: validate, insert the job and its items in bulk, then dispatch its chunks.

The source is read and checked on the caller's thread while writer threads insert the previous batches
(PostgreSQL COPY), so parsing and the database's work overlap; at most a few batches are held at any time,
whatever the size of the source. No chunk goes out before the whole source has been read and checked: a
source refused at its last line leaves no work done, no output written and no message queued.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError

from jobs.bulk import insert_items, refresh_statistics
from jobs.db import ensure_schema, session_scope
from jobs.dispatch import Dispatcher, send_chunks
from jobs.errors import InputNotAllowed, InvalidParameters, InvalidSource
from jobs.inputs import InputRoots
from jobs.items import ITEM_PARAMS, ItemSpec
from jobs.keys import check_output_name
from jobs.lifecycle import JobKind, JobStatus
from jobs.models import Item, Job
from jobs.outputs import output_location
from jobs.params import check_chars, validate_params, validate_text
from jobs.results import deliver_results
from jobs.settings import Settings
from jobs.state import finalize_job

log = logging.getLogger(__name__)

#: Items per insert transaction: large enough for bulk speed, small enough for flat memory.
INSERT_BATCH = 10_000
#: Batches written at once, each on its own database connection.
WRITERS = 2


def new_job_id() -> str:
    """A new job id: 32 hex digits."""
    return uuid.uuid4().hex


class ItemChecker:
    """Validates the items of one job: ids, inputs inside the allowed roots, prompt limits, parameters."""

    def __init__(self, kind: JobKind, settings: Settings) -> None:
        self.kind = kind
        self.roots = InputRoots(settings.allowed_input_roots)
        self.max_chars = settings.max_prompt_chars
        self.needs_image = kind in (JobKind.CAPTION, JobKind.EDIT)
        self.needs_text = kind is not JobKind.CAPTION
        #: Each item's output is a file named for its id (jobs.keys).
        self.makes_images = kind is not JobKind.CAPTION

    def __call__(self, spec: ItemSpec) -> ItemSpec:
        """The item with its text stripped and parameters validated; errors name the item."""
        self.check_id(spec)
        self.check_input(spec)
        self.check_text(spec)
        self.check_params(spec)
        return spec

    # The steps one at a time, in this order: the HTTP API runs them so to name the field an error is in.
    def check_id(self, spec: ItemSpec) -> None:
        """The item id: 1-512 characters that can be stored, and a valid file name for image outputs."""
        if not spec.key or len(spec.key) > 512:
            raise InvalidParameters(f"item id {spec.key[:60]!r} must have 1 to 512 characters")
        check_chars(spec.key, f"item id {spec.key[:60]!r}")
        if self.makes_images:
            check_output_name(spec.key)

    def check_input(self, spec: ItemSpec) -> None:
        """The input image, for the kinds that read one: present and inside the allowed input roots."""
        if not self.needs_image:
            return
        if not spec.source:
            raise InvalidParameters(f"item {spec.key!r}: no input image")
        check_chars(spec.source, f"item {spec.key!r}: input")
        if not self.roots.allows(spec.source):
            raise InputNotAllowed(
                f"item {spec.key!r}: {spec.source} is outside the allowed input roots "
                f"({', '.join(self.roots.roots)}); set OVIS_BATCH_INPUT_ROOTS to allow it"
            )

    def check_text(self, spec: ItemSpec) -> None:
        """The prompt or instruction, stripped: required for the kinds that need one, within the limit."""
        if spec.text or self.needs_text:
            what, required = f"item {spec.key!r}: prompt", self.needs_text
            spec.text = validate_text(spec.text, max_chars=self.max_chars, what=what, required=required)

    def check_params(self, spec: ItemSpec) -> None:
        """The per-item parameters: those the kind takes per item, within their ranges."""
        if spec.params:
            spec.params = self._params(spec)

    def _params(self, spec: ItemSpec) -> dict[str, Any] | None:
        assert spec.params is not None
        unknown = set(spec.params) - ITEM_PARAMS[self.kind]
        if unknown:
            raise InvalidParameters(
                f"item {spec.key!r}: unknown parameter(s) {', '.join(sorted(unknown))}; per-item parameters "
                f"for {self.kind.value}: {', '.join(sorted(ITEM_PARAMS[self.kind]))}"
            )
        model = validate_params(self.kind, spec.params, where=f"item {spec.key!r}")
        return model.model_dump(include=set(spec.params)) or None


def chunk_ranges(seqs: Iterable[int], size: int) -> list[tuple[int, int]]:
    """Sorted seqs grouped into ranges [start, stop) of at most `size` of them."""
    ranges: list[tuple[int, int]] = []
    start: int | None = None
    count = last = 0
    for seq in seqs:
        if start is None:
            start = seq
        last = seq
        count += 1
        if count == size:
            ranges.append((start, seq + 1))
            start, count = None, 0
    if start is not None:
        ranges.append((start, last + 1))
    return ranges


class _BatchWriter:
    """Inserts batches of one job, keeps its counters, and publishes the job's chunks once all are in.

    Several batches are written at once, each on its own connection: PostgreSQL's work per row is as large
    as the parsing's, and two backends keep both cores busy.
    """

    def __init__(
        self, settings: Settings, *, job_id: str, kind: JobKind, priority: int, dispatcher: Dispatcher
    ) -> None:
        self.url = settings.resolved_database_url
        self.job_id, self.kind, self.priority = job_id, kind, priority
        self.dispatcher = dispatcher
        self.chunk_size = settings.chunk_size
        self.total = 0
        #: Chunks of the batches written so far, published once the whole source is in.
        self.ranges: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def write(self, first: int, specs: list[ItemSpec]) -> None:
        """Insert one batch (seqs from `first`) in one transaction and note its chunks."""
        with session_scope(self.url) as session:
            insert_items(session, self.job_id, first, specs)
            # The counters last: concurrent batches then hold the job row's lock only until they commit.
            session.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(total=Job.total + len(specs), n_queued=Job.n_queued + len(specs))
            )
        ranges = chunk_ranges(range(first, first + len(specs)), self.chunk_size)
        with self._lock:
            self.total += len(specs)
            self.ranges.extend(ranges)

    def publish(self) -> None:
        """Send every chunk, in source order."""
        send_chunks(self.dispatcher, self.kind, self.job_id, sorted(self.ranges), self.priority)


def _batches(items: Iterable[ItemSpec], size: int) -> Iterator[list[ItemSpec]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def submit_job(
    settings: Settings,
    *,
    kind: JobKind,
    items: Iterable[ItemSpec],
    params: dict[str, Any],
    dispatcher: Dispatcher,
    source: str = "",
    priority: int = 0,
    output_url: str | None = None,
    skip_existing: bool = False,
    source_options: dict[str, Any] | None = None,
    notify_url: str | None = None,
    job_id: str | None = None,
) -> str:
    """Create a job from a stream of items and dispatch its chunks; return the job id (`job_id` if given,
    one `new_job_id` made: the HTTP API records it with the request's Idempotency-Key first).

    Chunks are dispatched only once every item has been read and checked: an invalid item stops the
    submission, the job and its items are deleted, and the error names the item.
    With `skip_existing`, a worker gives an item the output of an earlier job's item made from the same
    input bytes, prompt, parameters, seed and model into the same output location (workers.reuse) instead of
    computing it again; such items count as skipped. `notify_url` (checked by the caller) is POSTed to when
    the job ends (jobs.notify).
    """
    url = settings.resolved_database_url
    if settings.embedded:
        ensure_schema(url)
    job_params = validate_params(kind, params).model_dump()
    if job_params.get("prompt") is not None:
        job_params["prompt"] = validate_text(
            job_params["prompt"], max_chars=settings.max_prompt_chars, what="--prompt", required=True
        )
    if not 0 <= priority <= 9:
        raise InvalidParameters(f"priority must be between 0 (lowest) and 9 (got {priority})")
    job_id = job_id or new_job_id()
    output_url = output_location(output_url or settings.resolved_storage_url, settings)
    writer = _BatchWriter(settings, job_id=job_id, kind=kind, priority=priority, dispatcher=dispatcher)
    with session_scope(url) as session:
        session.add(
            Job(
                id=job_id,
                kind=kind.value,
                status=JobStatus.QUEUED.value,
                priority=priority,
                params=job_params,
                source=source,
                source_options=source_options or None,
                output_url=output_url,
                total=0,
                n_queued=0,
                n_running=0,
                n_succeeded=0,
                n_failed=0,
                n_cancelled=0,
                n_skipped=0,
                cancel_requested=False,
                submitting=True,
                reuse_outputs=skip_existing,
                notify_url=notify_url,
            )
        )
    check = ItemChecker(kind, settings)
    # Batches hold whole chunks, so that no chunk spans two batches that commit independently.
    batch_size = max(1, INSERT_BATCH // settings.chunk_size) * settings.chunk_size
    try:
        # One thread more than the writers: the dispatcher prepares on it while the first batches are written.
        with ThreadPoolExecutor(WRITERS + 1, thread_name_prefix="ovis-submit") as pool:
            pending: deque[Future[None]] = deque()
            prepare = getattr(dispatcher, "prepare", None)
            if prepare is not None:
                pool.submit(_quietly, prepare)
            first = 0
            for batch in _batches(items, batch_size):
                checked = [check(spec) for spec in batch]
                if len(pending) == WRITERS:
                    pending.popleft().result()
                pending.append(pool.submit(writer.write, first, checked))
                first += len(checked)
            for future in pending:
                future.result()
        if writer.total == 0:
            raise InvalidSource(f"the source {source or '(given)'} holds no items")
        # Workers' updates need plans made with the table's real size.
        refresh_statistics(url, writer.total)
        writer.publish()
    except BaseException as exc:
        _discard(url, job_id)
        if isinstance(exc, IntegrityError):
            raise InvalidSource(
                f"two items of {source or 'the source'} share one id; item ids must be unique within a job"
            ) from None
        raise
    _end_submission(settings, job_id)
    log.info(
        "submitted job %s: %d items",
        job_id,
        writer.total,
        extra={"job_id": job_id, "kind": kind.value, "items": writer.total},
    )
    return job_id


def _quietly(call: Callable[[], None]) -> None:
    try:
        call()
    except Exception as exc:
        log.debug("broker transport not prepared ahead: %s", exc)


def _discard(url: str, job_id: str) -> None:
    # Cancel first, in its own transaction: should publishing have failed half-way, a worker holding one of
    # the chunks already sent drops it.
    with session_scope(url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    with session_scope(url) as session:
        session.execute(delete(Item).where(Item.job_id == job_id))
        session.execute(delete(Job).where(Job.id == job_id))


def _end_submission(settings: Settings, job_id: str) -> None:
    """Mark the job's item list complete. If no item is left to run (the workers ended them all between the
    chunks' publishing and this), no worker will finalize the job: it is finalized and exported here."""
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(submitting=False))
        status = finalize_job(session, job_id=job_id)
    if status is not None:
        deliver_results(settings, job_id)
