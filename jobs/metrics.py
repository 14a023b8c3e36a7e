"""Prometheus metrics Flower does not export: jobs and items from SQL, queue depth from the broker.

A collector reads them again at every scrape: nothing is counted in this process, so any number of
`ovis-batch metrics --serve` processes give the same figures. Labels are bounded sets (kind, status, queue,
error code, and worker: a host's GPU, as many as the fleet has; see workers/cost.py), never job ids. Flower
exports the workers and their tasks (`flower_*`); docker/grafana holds a dashboard of both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from jobs.api import Client
from jobs.broker import make_celery
from jobs.db import ensure_schema, session_scope
from jobs.lifecycle import ItemStatus, JobKind, JobStatus
from jobs.models import Job, WorkerTotals
from jobs.queues import queue_depths, unacked_count
from jobs.settings import Settings

log = logging.getLogger(__name__)

_OPEN = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
#: Item states in the order of the job row's counters read below.
_ITEM_STATES = (
    ItemStatus.QUEUED,
    ItemStatus.RUNNING,
    ItemStatus.SUCCEEDED,
    ItemStatus.FAILED,
    ItemStatus.CANCELLED,
)

#: Workers that recorded nothing for this long (a host taken out of the fleet) are left out of the metrics.
WORKER_SEEN_S = 24 * 3600

INDEX_PAGE = (
    "<!doctype html><title>ovis-batch metrics</title>"
    "<p>ovis-batch: jobs, items and queues for Prometheus at <a href='/metrics'>/metrics</a>.</p>\n"
)


class JobMetrics(Collector):
    """Jobs by state, items of unfinished jobs by state and by error code, items done and GPU-seconds per
    kind and per worker (counters whose rate is the throughput), the oldest queued job, and the broker's
    queues."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._reachable = {"broker": True, "database": True}

    def collect(self) -> Iterator[Metric]:
        """Every metric, read now; a broker or database that does not answer gives `*_up 0` and leaves
        out what it would have told, instead of failing the scrape."""
        yield from self._broker_metrics()
        yield from self._database_metrics()

    def _up(self, service: str, up: bool, error: Exception | None = None) -> Metric:
        if self._reachable[service] and not up:
            log.warning("metrics: the %s does not answer: %s", service, str(error).splitlines()[0])
        elif up and not self._reachable[service]:
            log.info("metrics: the %s answers again", service)
        self._reachable[service] = up
        gauge = GaugeMetricFamily(f"ovis_batch_{service}_up", f"1 when the {service} answered this scrape.")
        gauge.add_metric([], 1.0 if up else 0.0)
        return gauge

    def _broker_metrics(self) -> Iterator[Metric]:
        app = make_celery(self.settings)
        # One try per scrape: a broker that is away shows as `ovis_batch_broker_up 0` at once, not after
        # the seconds of retries a worker would wait.
        app.conf.broker_transport_options = {**app.conf.broker_transport_options, "max_retries": 0}
        try:
            depths = queue_depths(app, self.settings)
            unacked = unacked_count(app)
        except Exception as exc:  # redis, kombu and socket errors alike: the SQL half still counts
            yield self._up("broker", False, exc)
            return
        finally:
            app.close()
        yield self._up("broker", True)
        depth = GaugeMetricFamily(
            "ovis_batch_queue_depth", "Chunk messages waiting in each queue.", labels=["queue"]
        )
        for name, count in sorted(depths.items()):
            depth.add_metric([name], count)
        yield depth
        taken = GaugeMetricFamily(
            "ovis_batch_messages_unacked", "Chunk messages taken by workers, not yet acknowledged."
        )
        taken.add_metric([], unacked)
        yield taken

    def _database_metrics(self) -> Iterator[Metric]:
        try:
            rows, failures = self._read_database()
            workers = self._read_workers()
        except SQLAlchemyError as exc:
            yield self._up("database", False, exc)
            return
        yield self._up("database", True)
        yield from _job_metrics(rows, failures, datetime.now(UTC))
        yield from _worker_metrics(workers)

    def _read_workers(self) -> Sequence[Any]:
        seen = datetime.now(UTC) - timedelta(seconds=WORKER_SEEN_S)
        totals = select(
            WorkerTotals.worker, WorkerTotals.kind, WorkerTotals.items_ended, WorkerTotals.gpu_seconds
        )
        with session_scope(self.settings.resolved_database_url) as session:
            return session.execute(totals.where(WorkerTotals.seen_at >= seen)).all()

    def _read_database(self) -> tuple[Sequence[Any], dict[tuple[str, str], int]]:
        counters = [Job.n_queued, Job.n_running, Job.n_succeeded, Job.n_failed, Job.n_cancelled]
        if self.settings.embedded:
            ensure_schema(self.settings.resolved_database_url)
        with session_scope(self.settings.resolved_database_url) as session:
            rows = session.execute(
                select(
                    Job.kind,
                    Job.status,
                    func.count(),
                    *[func.coalesce(func.sum(counter), 0) for counter in counters],
                    func.coalesce(func.sum(Job.n_skipped), 0),
                    func.coalesce(func.sum(Job.gpu_seconds), 0.0),
                    func.min(Job.created_at),
                ).group_by(Job.kind, Job.status)
            ).all()
            failing = session.execute(select(Job.id, Job.kind).where(Job.status.in_(_OPEN), Job.n_failed > 0))
            failing_jobs = list(failing)
        # Through the status index, at most ERRORS_SCANNED failed items per job: the cost follows failures.
        client = Client(self.settings)
        failures: dict[tuple[str, str], int] = {}
        for job_id, kind in failing_jobs:
            for code, count in client.errors_by_code(job_id).items():
                failures[(kind, code)] = failures.get((kind, code), 0) + count
        return rows, failures


def _job_metrics(
    rows: Iterable[Any], failures: dict[tuple[str, str], int], now: datetime
) -> Iterator[Metric]:
    kinds = [kind.value for kind in JobKind]
    jobs = {(kind, status.value): 0 for kind in kinds for status in JobStatus}
    items = {(kind, state.value): 0 for kind in kinds for state in _ITEM_STATES}
    computed = dict.fromkeys(kinds, 0)
    reused = dict.fromkeys(kinds, 0)
    gpu_seconds = dict.fromkeys(kinds, 0.0)
    oldest = dict.fromkeys(kinds, 0.0)
    for kind, status, count, *counts, skipped, spent, created_at in rows:
        jobs[(kind, status)] = jobs.get((kind, status), 0) + count
        # Reused outputs are counted as succeeded on the job; the throughput leaves them out.
        computed[kind] = computed.get(kind, 0) + counts[2] - skipped
        reused[kind] = reused.get(kind, 0) + skipped
        gpu_seconds[kind] = gpu_seconds.get(kind, 0.0) + float(spent)
        if status in _OPEN:
            for state, value in zip(_ITEM_STATES, counts, strict=True):
                items[(kind, state.value)] = items.get((kind, state.value), 0) + value
        if status == JobStatus.QUEUED.value and created_at is not None:
            created = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
            oldest[kind] = max(oldest.get(kind, 0.0), (now - created).total_seconds())

    yield _gauge("ovis_batch_jobs", "Jobs by kind and state.", ["kind", "status"], jobs)
    yield _gauge(
        "ovis_batch_open_job_items",
        "Items of unfinished jobs by kind and state (queued + running: the items left).",
        ["kind", "status"],
        items,
    )
    yield _gauge(
        "ovis_batch_open_job_failures",
        "Failed items of unfinished jobs by kind and error code.",
        ["kind", "code"],
        failures,
    )
    yield _counter(
        "ovis_batch_items_succeeded",
        "Items of every job that got their output from the model (reused outputs left out); its rate is "
        "the throughput.",
        computed,
    )
    yield _counter(
        "ovis_batch_items_reused",
        "Items of every job that took an earlier output with the same fingerprint (--skip-existing).",
        reused,
    )
    yield _counter(
        "ovis_batch_gpu_seconds",
        "Model time spent on the items of every job, in GPU-seconds (jobs/cost.py): its rate is the GPUs "
        "busy with the model.",
        gpu_seconds,
    )
    yield _gauge(
        "ovis_batch_oldest_queued_job_age_seconds",
        "Age of the oldest job no worker has started, by kind (0: none waits).",
        ["kind"],
        {(kind,): age for kind, age in oldest.items()},
    )


def _gauge(name: str, help_text: str, labels: list[str], values: Mapping[Any, float]) -> Metric:
    gauge = GaugeMetricFamily(name, help_text, labels=labels)
    for key, value in sorted(values.items()):
        gauge.add_metric(list(key), float(value))
    return gauge


def _worker_metrics(rows: Iterable[Any]) -> Iterator[Metric]:
    items = CounterMetricFamily(
        "ovis_batch_worker_items",
        "Items each worker ended (succeeded or failed), by kind: its rate is the worker's items per second.",
        labels=["worker", "kind"],
    )
    spent = CounterMetricFamily(
        "ovis_batch_worker_gpu_seconds",
        "Model time each worker spent, by kind, in GPU-seconds.",
        labels=["worker", "kind"],
    )
    for worker, kind, ended, seconds in sorted(rows):
        items.add_metric([worker, kind], float(ended))
        spent.add_metric([worker, kind], float(seconds))
    yield items
    yield spent


def _counter(name: str, help_text: str, values: Mapping[str, float]) -> Metric:
    counter = CounterMetricFamily(name, help_text, labels=["kind"])
    for kind, value in sorted(values.items()):
        counter.add_metric([kind], float(value))
    return counter


def registry_for(settings: Settings) -> CollectorRegistry:
    """A registry holding only the project's collector (no metrics of this process itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobMetrics(settings))
    return registry


def render(settings: Settings) -> str:
    """The metrics page in Prometheus text format, read now."""
    return generate_latest(registry_for(settings)).decode()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """A scrape every few seconds is not worth a log line."""


def metrics_server(settings: Settings, port: int, address: str = "127.0.0.1") -> WSGIServer:
    """An HTTP server for `/metrics` (and `/`, a page that links it), not yet serving. It listens on
    127.0.0.1 unless told otherwise: the figures say what runs, so exposing them is a choice."""
    metrics_app = make_wsgi_app(registry_for(settings))

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path.rstrip("/") == "/metrics":
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        status, body = ("200 OK", INDEX_PAGE) if path == "/" else ("404 Not Found", "see /metrics\n")
        content_type = "text/html; charset=utf-8" if path == "/" else "text/plain; charset=utf-8"
        data = body.encode()
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(data)))])
        return [data]

    return make_server(address, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)


def serve_forever(settings: Settings, port: int, address: str = "127.0.0.1") -> None:
    """Serve the metrics at http://address:port/metrics until the process is stopped."""
    with metrics_server(settings, port, address) as server:
        log.info("metrics at http://%s:%d/metrics", address, server.server_port)
        server.serve_forever()
