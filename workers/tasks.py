"""One chunk task per job kind. A task body is one straight path: run the chunk, or hand it back for later."""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

from celery import Task
from kombu.exceptions import OperationalError as KombuOperationalError

from jobs.broker import TASK_NAMES
from jobs.dispatch import CeleryDispatcher
from jobs.errors import Transient
from jobs.lifecycle import JobKind
from workers.celery_app import app
from workers.chunk import ChunkInterrupted, ChunkProgress, run_chunk
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

#: Backoff of transient faults: base * 2**retries seconds, capped, with full jitter.
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 120.0
MAX_TRANSIENT_RETRIES = 20


def backoff(retries: int) -> float:
    """Seconds to wait before the next try of a chunk that hit a transient fault."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**retries))


def _runtime() -> WorkerRuntime:
    """The process's runtime, publishing the items it hands back through this app."""
    runtime = WorkerRuntime.current()
    if runtime.dispatcher is None:
        runtime.dispatcher = CeleryDispatcher(runtime.settings, app)
    return runtime


class ChunkTask(Task):
    """A chunk of one job's items. Instantiated once per process; the model hangs off the runtime."""

    #: Retry bookkeeping is ours (per item in SQL), not Celery's autoretry.
    max_retries = MAX_TRANSIENT_RETRIES
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    kind: JobKind

    def run_kind(self, job_id: str, start: int, stop: int) -> dict[str, Any]:
        """Run the chunk; transient faults send it back with backoff."""

        def progress(report: ChunkProgress) -> None:
            # Flower shows the fields of task events: progress while a long chunk runs (throttled by the
            # chunk). Only monitoring: a broker that is away must not fail a chunk whose results are recorded.
            try:
                done = report.succeeded + report.failed
                self.send_event("task-progress", done=done, items=stop - start, **dataclasses.asdict(report))
            except KombuOperationalError:
                log.debug("progress event of job %s not sent: the broker is unavailable", job_id)

        try:
            outcome = run_chunk(_runtime(), self.kind, job_id, int(start), int(stop), progress)
        except ChunkInterrupted as exc:
            # Graceful stop: publish the chunk again before this message is acknowledged.
            raise self.retry(exc=exc, countdown=0, max_retries=None) from exc
        except Transient as exc:
            delay = backoff(self.request.retries)
            log.warning(
                "chunk %s[%d:%d] hit %s; retrying in %.1fs",
                job_id,
                start,
                stop,
                exc.error_code,
                delay,
                extra={"job_id": job_id},
            )
            raise self.retry(exc=exc, countdown=delay) from exc
        return {
            "job_id": job_id,
            "kind": self.kind.value,
            "items": stop - start,
            "claimed": outcome.claimed,
            "succeeded": outcome.succeeded,
            "failed": outcome.failed,
            "cancelled": outcome.cancelled,
            "read_ahead": outcome.read_ahead,
            **outcome.timings(),
        }


class CaptionTask(ChunkTask):
    kind = JobKind.CAPTION


class GenerateTask(ChunkTask):
    kind = JobKind.GENERATE


class EditTask(ChunkTask):
    kind = JobKind.EDIT


@app.task(bind=True, base=CaptionTask, name=TASK_NAMES[JobKind.CAPTION])
def caption(self: CaptionTask, job_id: str, start: int, stop: int) -> dict[str, Any]:
    """Caption items [start, stop) of a job."""
    return self.run_kind(job_id, start, stop)


@app.task(bind=True, base=GenerateTask, name=TASK_NAMES[JobKind.GENERATE])
def generate(self: GenerateTask, job_id: str, start: int, stop: int) -> dict[str, Any]:
    """Render items [start, stop) of a job."""
    return self.run_kind(job_id, start, stop)


@app.task(bind=True, base=EditTask, name=TASK_NAMES[JobKind.EDIT])
def edit(self: EditTask, job_id: str, start: int, stop: int) -> dict[str, Any]:
    """Edit items [start, stop) of a job."""
    return self.run_kind(job_id, start, stop)
