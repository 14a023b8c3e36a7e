"""Prometheus metrics Flower does not export: queue depth, jobs by state, items by state of open jobs."""

from __future__ import annotations

from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import func, select

from jobs.broker import make_celery
from jobs.db import session_scope
from jobs.lifecycle import JobStatus
from jobs.models import Job
from jobs.queues import queue_depths, unacked_count
from jobs.settings import Settings

_OPEN = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def render(settings: Settings) -> str:
    """The metrics page, read from the broker and from job rows (never from the items table)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: Sequence[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")

    app = make_celery(settings)
    try:
        depths = queue_depths(app, settings)
        unacked = unacked_count(app)
    finally:
        app.close()
    metric(
        "ovis_batch_queue_depth",
        "gauge",
        "Chunk messages waiting in each queue.",
        [({"queue": name}, depth) for name, depth in sorted(depths.items())],
    )
    metric(
        "ovis_batch_messages_unacked",
        "gauge",
        "Chunk messages taken by workers, not yet acknowledged.",
        [({}, unacked)],
    )
    with session_scope(settings.resolved_database_url) as session:
        by_status = session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))
        jobs = [({"kind": kind, "status": status}, count) for kind, status, count in by_status]
        sums = session.execute(
            select(
                Job.kind,
                func.sum(Job.n_queued),
                func.sum(Job.n_running),
                func.sum(Job.n_succeeded),
                func.sum(Job.n_failed),
                func.sum(Job.n_cancelled),
            )
            .where(Job.status.in_(_OPEN))
            .group_by(Job.kind)
        )
        items = []
        for kind, *counts in sums:
            for state, count in zip(
                ("queued", "running", "succeeded", "failed", "cancelled"), counts, strict=True
            ):
                items.append(({"kind": kind, "status": state}, float(count or 0)))
    metric("ovis_batch_jobs", "gauge", "Jobs by kind and state.", jobs)
    metric("ovis_batch_open_job_items", "gauge", "Items of unfinished jobs by kind and state.", items)
    return "\n".join(lines) + "\n"


def serve_forever(settings: Settings, port: int, address: str = "0.0.0.0") -> None:
    """Serve the metrics page at /metrics."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/metrics":
                self.send_error(404)
                return
            body = render(settings).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    ThreadingHTTPServer((address, port), Handler).serve_forever()
