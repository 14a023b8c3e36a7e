"""Progress of a running chunk, as Celery task events Flower shows.

Events are sent under the task's own id, name and worker node name, whichever thread reports (the chunk's
bookkeeping runs beside the model): Celery's `Task.send_event` takes them from the task's request, which only
the thread that runs the task has, and sent from elsewhere they would name no task and come from a phantom
worker.

Flower keeps only Celery's own task fields, so the progress is also written as one line in the `result` field
(Celery's place for a task's progress: what `update_state(state="PROGRESS", meta=...)` stores): the task is
listed as STARTED, then PROGRESS with "812/2048 items, 41.3 items/s; job 35.2% (352,000 of 1,000,000)", then
SUCCESS with the chunk's counters.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from workers.ledger import ChunkProgress

log = logging.getLogger(__name__)

PROGRESS_EVENT = "task-progress"


def progress_fields(report: ChunkProgress) -> dict[str, Any]:
    """The fields of a progress event: the chunk's and the job's counts, the rate, and a line for people."""
    done = report.succeeded + report.failed + report.cancelled
    rate = done / report.elapsed_s if report.elapsed_s > 0 else 0.0
    share = 100.0 * report.job_done / report.job_items if report.job_items else 0.0
    line = (
        f"{done}/{report.claimed} items, {rate:.1f} items/s; "
        f"job {share:.1f}% ({report.job_done:,} of {report.job_items:,})"
    )
    return {
        "job_id": report.job_id,
        "start": report.start,
        "stop": report.stop,
        "done": done,
        "claimed": report.claimed,
        "succeeded": report.succeeded,
        "failed": report.failed,
        "rate": round(rate, 2),
        "model_s": round(report.model_s, 3),
        "job_done": report.job_done,
        "job_items": report.job_items,
        "job_percent": round(share, 2),
        "result": line,
    }


class TaskEvents:
    """Sends one running task's progress events; safe to call from any thread."""

    def __init__(self, app: Celery, *, task_id: str | None, task_name: str, hostname: str | None) -> None:
        self.app = app
        self.task_id = task_id
        self.task_name = task_name
        self.hostname = hostname

    @property
    def enabled(self) -> bool:
        """Events need the task's id and the worker's name (a task called directly has neither)."""
        return bool(self.task_id and self.hostname)

    def progress(self, report: ChunkProgress) -> None:
        """Send a progress event. Only monitoring: a broker that is away must not fail the chunk."""
        if not self.enabled:
            return
        try:
            with self.app.events.default_dispatcher(hostname=self.hostname) as dispatcher:
                dispatcher.send(
                    PROGRESS_EVENT,
                    uuid=self.task_id,
                    name=self.task_name,
                    retry=False,
                    **progress_fields(report),
                )
        except Exception as exc:
            log.debug(
                "progress event of job %s not sent: %s", report.job_id, exc, extra={"job_id": report.job_id}
            )
