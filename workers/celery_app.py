"""The project's one Celery app: configuration from settings, the chunk tasks, and model loading at start."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from jobs.broker import make_celery
from jobs.db import dispose_engines, ensure_schema
from jobs.settings import get_settings

log = logging.getLogger(__name__)

app = make_celery(get_settings(), include=["workers.tasks"])


def _load_model() -> None:
    from gpu_model import BackendLoadError
    from workers.runtime import WorkerRuntime

    settings = get_settings()
    if settings.embedded:
        ensure_schema(settings.resolved_database_url)
    try:
        WorkerRuntime.current().load()
    except BackendLoadError as exc:
        # Celery logs and swallows exceptions of signal handlers: a worker without its model must not start.
        log.critical("%s", exc)
        raise SystemExit(3) from exc


@signals.worker_init.connect
def _load_in_solo_worker(sender: Any = None, **_: Any) -> None:
    # solo and threads pools run tasks in this process: load before the consumer starts.
    pool = str(getattr(sender, "pool_cls", "")).lower()
    if "solo" in pool or "thread" in pool:
        _load_model()


@signals.worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    # prefork: each child loads its own model after the fork; nothing CUDA happened in the parent.
    dispose_engines()
    _load_model()


@signals.worker_shutting_down.connect
def _stop_chunks(**_: Any) -> None:
    # Warm shutdown (SIGTERM): the running chunk hands its unfinished items back at the next micro-batch
    # instead of holding the shutdown for the rest of the chunk.
    from workers.runtime import WorkerRuntime

    WorkerRuntime.current().stopping.set()


@signals.worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    from workers.reconciler import start_reconciler

    start_reconciler(get_settings())
