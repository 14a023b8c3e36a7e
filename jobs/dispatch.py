"""Sending chunk messages: ids and seq ranges only, never image bytes."""

from __future__ import annotations

from typing import Protocol

from celery import Celery

from jobs.broker import TASK_NAMES, broker_priority, make_celery, queue_for
from jobs.lifecycle import JobKind
from jobs.settings import Settings


class Dispatcher(Protocol):
    """Something that gets a chunk of a job's items run."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Have the items with seq in [start, stop) of the job processed."""


class CeleryDispatcher:
    """Publishes one Celery task per chunk, by task name (producers never import the worker code)."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Publish the chunk to its kind's queue."""
        self.app.send_task(
            TASK_NAMES[kind],
            args=[job_id, start, stop],
            queue=queue_for(self.settings, kind),
            priority=broker_priority(self.settings, priority),
            shadow=f"{TASK_NAMES[kind]}[{job_id[:8]} {start}-{stop}]",
        )

    def close(self) -> None:
        """Release broker connections."""
        self.app.close()
