"""The embedded all-in-one mode: submit and process in this process, on the same chunk code as a worker."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gpu_model import Backend
from jobs.api import Client, JobReport
from jobs.errors import Transient
from jobs.lifecycle import JobKind
from jobs.settings import Settings
from workers.chunk import run_chunk
from workers.runtime import WorkerRuntime
from workers.tasks import MAX_TRANSIENT_RETRIES, backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Chunk:
    kind: JobKind
    job_id: str
    start: int
    stop: int
    retries: int = 0


class InlineDispatcher:
    """Keeps chunks in a local queue for the in-process worker thread."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[_Chunk] = queue.Queue()

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Queue the chunk for this process."""
        self.chunks.put(_Chunk(kind, job_id, start, stop))


class EmbeddedRunner:
    """A client and a worker thread sharing one process and one loaded model."""

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.dispatcher = InlineDispatcher()
        self.client = Client(settings, self.dispatcher)
        self.runtime = WorkerRuntime(settings, backend)
        self.runtime.dispatcher = self.dispatcher
        WorkerRuntime.install(self.runtime)
        self.error: BaseException | None = None

    def _work(self) -> None:
        # Every chunk is queued before this thread starts; a retried chunk goes back in before we look again.
        while True:
            try:
                chunk = self.dispatcher.chunks.get_nowait()
            except queue.Empty:
                return
            try:
                run_chunk(self.runtime, chunk.kind, chunk.job_id, chunk.start, chunk.stop)
            except Transient as exc:
                if chunk.retries >= MAX_TRANSIENT_RETRIES:
                    self.error = exc
                    return
                time.sleep(backoff(chunk.retries))
                self.dispatcher.chunks.put(
                    _Chunk(chunk.kind, chunk.job_id, chunk.start, chunk.stop, chunk.retries + 1)
                )
            except BaseException as exc:
                self.error = exc
                return

    def run(
        self,
        kind: JobKind,
        source: str,
        *,
        params: dict[str, object] | None = None,
        on_progress: Callable[[JobReport], None] | None = None,
        poll_s: float = 0.2,
        skip_existing: bool = False,
    ) -> JobReport:
        """Load the model, submit `source`, process every chunk and return the final report."""
        self.runtime.load()
        job_id = self.client.submit(kind, source, params=dict(params or {}), skip_existing=skip_existing)
        thread = threading.Thread(target=self._work, name="ovis-embedded-worker", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(poll_s)
            if on_progress is not None:
                on_progress(self.client.status(job_id))
        if self.error is not None:
            raise self.error
        report = self.client.status(job_id)
        if on_progress is not None:
            on_progress(report)
        return report
