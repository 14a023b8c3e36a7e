"""The Celery configuration shared by producers (which send tasks by name) and workers."""

from __future__ import annotations

from typing import Any

from celery import Celery

from jobs.lifecycle import JobKind
from jobs.settings import Settings

#: Task names, one per job kind.
TASK_NAMES: dict[JobKind, str] = {kind: f"ovis.{kind.value}" for kind in JobKind}
#: Celery priorities run 0 (lowest) to 9 with the Redis transport's priority emulation.
MAX_PRIORITY = 9


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for long GPU work (see the pitfalls they avoid in the README)."""
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s}
    broker_url = settings.resolved_broker_url
    if broker_url.startswith("filesystem"):
        folder = settings.home / "broker"
        for sub in ("in", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport.update(
            control_folder=str(folder / "control"),
            # The folder transport polls; the default second would delay every chunk's start.
            polling_interval=0.1,
            data_folder_in=str(folder / "in"),
            data_folder_out=str(folder / "in"),
            processed_folder=str(folder / "processed"),
            store_processed=False,
        )
    else:
        # Redis has no native priorities: kombu emulates them with one list per step.
        transport.update(
            priority_steps=list(range(MAX_PRIORITY + 1)), sep=":", queue_order_strategy="priority"
        )
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "result_backend": None,
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "visibility_timeout": settings.visibility_timeout_s,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "task_track_started": True,
        "task_default_queue": settings.queue,
        "task_queue_max_priority": MAX_PRIORITY,
        "task_default_priority": 0,
        "worker_hijack_root_logger": False,
        "worker_soft_shutdown_timeout": 30.0,
        "worker_enable_soft_shutdown_on_idle": True,
    }


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    """A Celery app configured from settings."""
    app = Celery("ovis_batch", include=include or [])
    app.conf.update(celery_config(settings))
    return app


def broker_priority(settings: Settings, priority: int) -> int:
    """The message priority for a job priority (0 lowest .. 9 highest): Redis reads 0 as the highest."""
    if settings.resolved_broker_url.startswith(("redis", "rediss", "sentinel")):
        return MAX_PRIORITY - priority
    return priority


def queue_for(settings: Settings, kind: JobKind) -> str:
    """The queue a kind's chunks go to; workers consume all kinds unless dedicated with `--queues`."""
    return f"{settings.queue}.{kind.value}"


def worker_queues(settings: Settings) -> list[str]:
    """The queues a worker consumes: those configured, or every kind's."""
    return list(settings.queues) or [queue_for(settings, kind) for kind in JobKind]
