"""One chunk task per job kind. A task body is one straight path: run the chunk, or hand it back for later."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from jobs.broker import TASK_NAMES
from jobs.dispatch import CeleryDispatcher
from jobs.errors import Transient
from jobs.lifecycle import JobKind
from workers.celery_app import app
from workers.chunk import ChunkInterrupted, run_chunk
from workers.monitor import TaskEvents
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

#: Backoff of transient faults: base * 2**retries seconds, capped, with full jitter (Celery's own).
BACKOFF_BASE_S = 2
BACKOFF_CAP_S = 120
MAX_TRANSIENT_RETRIES = 20


def backoff(retries: int) -> float:
    """Seconds to wait before the next try of a chunk that hit a transient fault."""
    return float(get_exponential_backoff_interval(BACKOFF_BASE_S, retries, BACKOFF_CAP_S, full_jitter=True))


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

        # Progress events under this task's id and worker name, sent from the chunk's bookkeeping thread.
        events = TaskEvents(app, task_id=self.request.id, task_name=self.name, hostname=self.request.hostname)
        try:
            outcome = run_chunk(_runtime(), self.kind, job_id, int(start), int(stop), events.progress)
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
