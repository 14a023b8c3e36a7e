"""What a worker process keeps for its whole life: the loaded backend, storage handles and I/O threads."""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gpu_model import Backend, BackendInfo, BackendOptions, create_backend
from jobs.db import session_scope
from jobs.dispatch import Dispatcher
from jobs.lifecycle import JobKind
from jobs.settings import Settings, get_settings
from jobs.state import ClaimedItem, release_items
from storage import Store, open_store
from workers.readahead import ReadAhead

log = logging.getLogger(__name__)


#: Allocations between collections of young objects (Python's default: 700). A chunk makes many short-lived
#: containers (rows, requests, images' attributes) and hardly any reference cycles.
GC_YOUNG_THRESHOLD = 10_000


def _settle_garbage_collection() -> None:
    # What exists once the model is loaded (modules, the model, clients) lives as long as the process: frozen,
    # it is left out of every later collection, which then costs what the chunks allocate, not the heap.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


class WorkerRuntime:
    """Per-process state shared by every chunk task of the process. The model is loaded once."""

    _current: WorkerRuntime | None = None
    _lock = threading.Lock()

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}"
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

    def give_back(self, job_id: str, kind: str, priority: int, items: list[ClaimedItem]) -> None:
        """Hand items claimed ahead back to the queue, their attempt taken back, and publish them again."""
        seqs = [item.seq for item in items]
        try:
            with session_scope(self.settings.resolved_database_url) as session:
                release_items(session, job_id=job_id, seqs=seqs, worker=self.name, uncount=seqs)
        except Exception:
            log.warning(
                "could not hand back %d items of job %s read ahead; their lease expires instead",
                len(seqs),
                job_id,
                exc_info=True,
                extra={"job_id": job_id},
            )
            return
        self.send_again(kind, job_id, priority, seqs)

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

    def load(self) -> BackendInfo:
        """Load and warm up the model (before the worker consumes any message)."""
        if self._info is None:
            log.info("loading backend %s", self.settings.backend)
            self._info = self.backend.load()
            self.backend.warmup()
            log.info("backend %s ready on %s", self._info.name, self._info.device)
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
