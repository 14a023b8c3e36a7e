"""What a worker process keeps for its whole life: the loaded backend, storage handles and I/O threads."""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from gpu_model import Backend, BackendInfo, BackendOptions, create_backend
from gpu_model.compile_cache import CacheSetup, persistent_caches, point_caches
from gpu_model.startup import startup
from jobs.broker import queue_for
from jobs.db import session_scope
from jobs.dispatch import Dispatcher
from jobs.lifecycle import JobKind
from jobs.settings import Settings, get_settings
from jobs.state import ClaimedItem, release_items
from storage import Store, open_store
from workers.handback import HandBack, PendingHandBacks
from workers.health import Liveness
from workers.readahead import ReadAhead

log = logging.getLogger(__name__)


#: Allocations between collections of young objects (Python's default: 700). A chunk makes many short-lived
#: containers (rows, requests, images' attributes) and hardly any reference cycles.
GC_YOUNG_THRESHOLD = 10_000


class StopSignal(Protocol):
    """An event another process sets: the parent of a prefork pool telling its children that it stops."""

    def wait(self, timeout: float | None = None) -> bool: ...


def _settle_garbage_collection() -> None:
    # What exists once the model is loaded (modules, the model, clients) lives as long as the process: frozen,
    # it is left out of every later collection, which then costs what the chunks allocate, not the heap.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def consumed_kinds(settings: Settings, queues: Sequence[str] | None = None) -> frozenset[str] | None:
    """The job kinds a worker takes from `queues` (default: the configured ones); None for every kind: no
    queue named, or one that is not a kind's `{queue}.{kind}` (what it carries is unknown)."""
    names = list(settings.queues if queues is None else queues)
    by_queue = {queue_for(settings, kind): kind.value for kind in JobKind}
    if not names or any(name not in by_queue for name in names):
        return None
    return frozenset(by_queue[name] for name in names)


class WorkerRuntime:
    """Per-process state shared by every chunk task of the process. The model is loaded once."""

    _current: WorkerRuntime | None = None
    _lock = threading.Lock()

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        startup.restart()
        #: Where torch keeps what it compiles: set before the backend's module imports torch.
        self.compile_cache: CacheSetup = point_caches(settings.resolved_compile_cache)
        self.backend = backend or create_backend(
            settings.backend,
            BackendOptions(
                model_path=settings.model_path,
                revision=settings.model_revision,
                device=settings.device,
                max_batch=settings.max_batch_overrides(),
                simulated_ms_per_item=settings.fake_ms_per_item,
                simulated_ms_per_batch=settings.fake_ms_per_batch,
                simulated_crash_marker=settings.fake_crash_marker,
                simulated_hang_marker=settings.fake_hang_marker,
            ),
        )
        self._info: BackendInfo | None = None
        self._stores: dict[str, Store] = {}
        self.io_pool = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="ovis-io")
        # I/O threads decoding and uploading hold the GIL in turns; a short switch interval lets the thread
        # that drives the model take it back quickly, so the accelerator does not wait on Python.
        sys.setswitchinterval(0.0005)
        #: One thread for the SQL bookkeeping of chunks, in order, beside the model.
        self.bookkeeper = ThreadPoolExecutor(1, thread_name_prefix="ovis-record")
        #: Set on a graceful shutdown: chunks hand their items back at the next micro-batch.
        self.stopping = threading.Event()
        #: Publishes a chunk of items this worker hands back outside the chunk that claimed them: Celery for a
        #: worker process, the local queue for the embedded runner.
        self.dispatcher: Dispatcher | None = None
        #: The next chunk's first micro-batch, prepared while a chunk ends (see workers/readahead.py).
        self.read_ahead: ReadAhead[Any] = ReadAhead(self.give_back)
        #: Hand-backs the database refused, made as soon as it answers (see workers/handback.py).
        self.pending_hand_backs = PendingHandBacks(self._hand_back_kept)
        #: Beats of the chunk loop, for the health command and the stall watchdog (see workers/health.py).
        self.liveness = Liveness()

    def follow(self, stop: StopSignal) -> None:
        """Set `stopping` once `stop` is set: a prefork child learns of its parent's warm shutdown this way,
        as Celery keeps SIGTERM from the children of a pool that stops gracefully."""

        def watch() -> None:
            stop.wait()
            self.stopping.set()

        threading.Thread(target=watch, name="ovis-stop-watch", daemon=True).start()

    def give_back(self, job_id: str, kind: str, priority: int, items: list[ClaimedItem]) -> None:
        """Hand items claimed ahead back to the queue, their attempt taken back, and publish them again."""
        seqs = [item.seq for item in items]
        self.hand_back(job_id, kind, priority, seqs, uncount=seqs, publish=seqs)

    def hand_back(
        self,
        job_id: str,
        kind: str,
        priority: int,
        seqs: Collection[int],
        *,
        uncount: Collection[int],
        publish: Collection[int],
    ) -> bool:
        """Put running items of this worker back in the queue, the attempts of those in `uncount` taken back,
        and publish `publish` again; return True if done now. When the database refuses, the hand-back is kept
        and made as soon as it answers, every item then published again (the chunk's own message may have
        come and gone meanwhile)."""
        handback = HandBack(
            job_id,
            kind,
            priority,
            seqs=tuple(sorted(seqs)),
            uncount=tuple(sorted(set(uncount) & set(seqs))),
            publish=tuple(sorted(publish)),
        )
        try:
            self._release(handback)
        except SQLAlchemyError as exc:
            log.warning(
                "could not hand back %d items of job %s (%s); handing them back as soon as the database "
                "answers",
                len(handback.seqs),
                job_id,
                exc.__class__.__name__,
                extra={"job_id": job_id},
            )
            self.pending_hand_backs.keep(replace(handback, publish=handback.seqs))
            return False
        self.send_again(kind, job_id, priority, handback.publish)
        return True

    def _release(self, handback: HandBack) -> None:
        with session_scope(self.settings.resolved_database_url) as session:
            release_items(
                session,
                job_id=handback.job_id,
                seqs=handback.seqs,
                worker=self.name,
                uncount=handback.uncount,
            )

    def _hand_back_kept(self, handback: HandBack) -> None:
        self._release(handback)
        self.send_again(handback.kind, handback.job_id, handback.priority, handback.publish)

    def send_again(self, kind: str, job_id: str, priority: int, seqs: Collection[int]) -> None:
        """Publish one chunk over items handed back outside the chunk message that covers them; without a
        dispatcher, or when publishing fails, the reconciler re-dispatches them."""
        if not seqs:
            return
        if self.dispatcher is None:
            log.info("%d items of job %s left to the reconciler", len(seqs), job_id, extra={"job_id": job_id})
            return
        try:
            self.dispatcher.send_chunk(JobKind(kind), job_id, min(seqs), max(seqs) + 1, priority)
        except Exception:
            log.warning(
                "could not publish %d items of job %s again; the reconciler re-dispatches them",
                len(seqs),
                job_id,
                exc_info=True,
                extra={"job_id": job_id},
            )

    @classmethod
    def current(cls) -> WorkerRuntime:
        """The process's runtime, created from settings on first use."""
        with cls._lock:
            if cls._current is None or cls._current.name != f"{socket.gethostname()}:{os.getpid()}":
                cls._current = WorkerRuntime(get_settings())
            return cls._current

    @classmethod
    def existing(cls) -> WorkerRuntime | None:
        """The process's runtime if it has one (the parent of a prefork pool has none: its children do)."""
        with cls._lock:
            runtime = cls._current
            if runtime is None or runtime.name != f"{socket.gethostname()}:{os.getpid()}":
                return None
            return runtime

    @classmethod
    def install(cls, runtime: WorkerRuntime) -> None:
        """Use `runtime` for this process (the embedded runner and tests bring their own)."""
        with cls._lock:
            cls._current = runtime

    @property
    def info(self) -> BackendInfo:
        """The loaded backend's description; loads the model on first use."""
        if self._info is None:
            self.load()
        assert self._info is not None
        return self._info

    def load(self, kinds: Collection[str] | None = None) -> BackendInfo:
        """Load the model and warm up what work of `kinds` reuses (default: the kinds of the configured
        queues), before the worker consumes any message."""
        if self._info is None:
            kinds = consumed_kinds(self.settings) if kinds is None else kinds
            startup.phase(log, "loading backend %s; %s", self.settings.backend, self.compile_cache.describe())
            self._info = self.backend.load()
            if "torch" in sys.modules:  # the fake backend never imports it
                log.info("torch's persistent compile caches: %s", persistent_caches())
            startup.phase(log, "warming up for %s", ", ".join(sorted(kinds)) if kinds else "every kind")
            self.backend.warmup(kinds)
            startup.phase(
                log,
                "backend %s ready on %s; a model call that meets a new shape first compiles it (logged), "
                "within the stall limit of %.0fs",
                self._info.name,
                self._info.device,
                self.settings.stall_timeout_s,
            )
            _settle_garbage_collection()
        return self._info

    def store(self, url: str) -> Store:
        """A store for an output URL, one per URL per process."""
        store = self._stores.get(url)
        if store is None:
            store = self._stores[url] = open_store(url, self.settings.s3_options())
        return store

    def max_batch(self, kind: str) -> int:
        """Largest micro-batch for a kind."""
        return max(1, self.info.max_batch.get(kind, 1))
