"""The project's one Celery app: configuration from settings, the chunk tasks, and model loading at start."""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any

from billiard.process import current_process
from celery import signals
from PIL import Image

from jobs.broker import make_celery
from jobs.db import dispose_engines, ensure_schema, get_engine
from jobs.settings import get_settings
from workers import watchdog as _health_command  # noqa: F401 - registers the command every worker answers
from workers.affinity import pin_pool_process

log = logging.getLogger(__name__)

app = make_celery(get_settings(), include=["workers.tasks"])

#: Processes of this worker's prefork pool, learnt before the pool forks (0: not a prefork worker).
_pool: dict[str, int] = {"processes": 0}
#: Set by the parent of a prefork pool when its warm shutdown starts; created before the pool forks, so that
#: every child inherits it (see _stop_chunks).
_pool_stopping: dict[str, Any] = {"event": None}


def _load_model() -> None:
    from gpu_model import BackendLoadError
    from workers.runtime import WorkerRuntime, consumed_kinds

    settings = get_settings()
    if settings.embedded:
        ensure_schema(settings.resolved_database_url)
    from workers.watchdog import start_watchdog

    try:
        runtime = WorkerRuntime.current()
        # The queues this worker consumes (its --queues), chosen before worker_init: warm up their kinds only.
        runtime.load(consumed_kinds(settings, list(app.amqp.queues.consume_from)))
    except BackendLoadError as exc:
        # Celery logs and swallows exceptions of signal handlers: a worker without its model must not start.
        log.critical("%s", exc)
        raise SystemExit(3) from exc
    start_watchdog(runtime, settings.stall_timeout_s)


@signals.worker_init.connect
def _init_worker(sender: Any = None, **_: Any) -> None:
    # The database driver and the image plugins are imported here, once, before a prefork pool forks: not by
    # every child on its first chunk.
    get_engine(get_settings().resolved_database_url)
    Image.preinit()
    # threads (every GPU worker) and solo pools run tasks in this process: load before the consumer starts.
    # Only the children of a prefork pool get a share of the cores; an in-process pool keeps them all for its
    # I/O threads.
    pool = str(getattr(sender, "pool_cls", "")).lower()
    in_process = "solo" in pool or "thread" in pool
    concurrency = getattr(sender, "concurrency", 0)
    _pool["processes"] = concurrency if isinstance(concurrency, int) and not in_process else 0
    if in_process:
        _load_model()
    else:
        _pool_stopping["event"] = multiprocessing.Event()


@signals.worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    # prefork: each child loads its own model after the fork; nothing CUDA happened in the parent.
    dispose_engines()
    if get_settings().pin_cpus:
        pin_pool_process(getattr(current_process(), "index", 0), _pool["processes"])
    _load_model()
    if _pool_stopping["event"] is not None:
        from workers.runtime import WorkerRuntime

        WorkerRuntime.current().follow(_pool_stopping["event"])


@signals.worker_shutting_down.connect
def _stop_chunks(**_: Any) -> None:
    # Warm shutdown (SIGTERM): running chunks hand their unfinished items back at the next micro-batch instead
    # of holding the shutdown for the rest of the chunk. A threads pool runs them in this process; a prefork
    # pool in children that Celery never signals on a warm shutdown (it waits for their tasks): they watch
    # the event this process sets.
    from workers.runtime import WorkerRuntime

    if _pool_stopping["event"] is not None:
        _pool_stopping["event"].set()
    runtime = WorkerRuntime.existing()
    if runtime is not None:
        runtime.stopping.set()


@signals.worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    from workers.reconciler import start_reconciler

    start_reconciler(get_settings())
