"""Sending chunk messages: ids and seq ranges only, never image bytes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from celery import Celery

from jobs.broker import TASK_NAMES, broker_priority, make_celery, queue_for
from jobs.lifecycle import JobKind
from jobs.settings import Settings

#: Broker commands buffered before a pipelined flush (kombu's producer batch).
PUBLISH_BATCH = 1000


class Dispatcher(Protocol):
    """Something that gets a chunk of a job's items run."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Have the items with seq in [start, stop) of the job processed."""


class CeleryDispatcher:
    """Publishes one Celery task per chunk, by task name (producers never import the worker code)."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)
        self._bulk_app = app

    @property
    def bulk_app(self) -> Celery:
        """The app bulk publishing goes through: the same broker, without a "task-sent" event per chunk.

        A million-item job is thousands of chunks: an event for each would add to the publishing (see
        bench/submit_scale.py) and flood Flower's task list (10,000 tasks by default) with pending chunks;
        workers still report every chunk they receive, start and finish.
        """
        if self._bulk_app is None:
            self._bulk_app = make_celery(self.settings)
            self._bulk_app.conf.task_send_sent_event = False
        return self._bulk_app

    def prepare(self) -> None:
        """Make the first publish cheap: load the broker transport's code and open a pooled connection while
        the source is still being read, so that publishing the chunks once it is checked waits for neither."""
        with self.bulk_app.producer_or_acquire() as producer:
            producer.connection.default_channel  # noqa: B018 - connects; released to the pool open

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Publish the chunk to its kind's queue."""
        self._publish(self.app, kind, job_id, start, stop, priority, None)

    def send_chunks(
        self, kind: JobKind, job_id: str, ranges: Sequence[tuple[int, int]], priority: int
    ) -> None:
        """Publish many chunks through one producer, pipelined: few Redis round trips instead of two each."""
        app = self.bulk_app
        with app.producer_or_acquire() as producer, producer.batch(PUBLISH_BATCH):
            for index, (start, stop) in enumerate(ranges):
                # The first message declares the queue; declaring it again for every message would repeat that
                # work for each of a large job's thousands of chunks (see bench/submit_scale.py).
                declare: list[Any] | None = None if index == 0 else []
                self._publish(app, kind, job_id, start, stop, priority, producer, declare)

    def _publish(
        self,
        app: Celery,
        kind: JobKind,
        job_id: str,
        start: int,
        stop: int,
        priority: int,
        producer: Any,
        declare: list[Any] | None = None,
    ) -> None:
        app.send_task(
            TASK_NAMES[kind],
            args=[job_id, start, stop],
            queue=queue_for(self.settings, kind),
            priority=broker_priority(self.settings, priority),
            producer=producer,
            declare=declare,
        )

    def close(self) -> None:
        """Release broker connections."""
        self.app.close()
        if self._bulk_app is not None and self._bulk_app is not self.app:
            self._bulk_app.close()


def send_chunks(
    dispatcher: Dispatcher, kind: JobKind, job_id: str, ranges: Sequence[tuple[int, int]], priority: int
) -> None:
    """Send chunks in bulk where the dispatcher can (submission, resume), else one by one."""
    if not ranges:
        return
    bulk = getattr(dispatcher, "send_chunks", None)
    if bulk is not None:
        bulk(kind, job_id, ranges, priority)
        return
    for start, stop in ranges:
        dispatcher.send_chunk(kind, job_id, start, stop, priority)
