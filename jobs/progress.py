"""A job's progress for people: rate, ETA, GPU time and failures by code from the job row, `status` (its
table and its JSON) and `status --watch`.

Every figure comes from the job's counters (one row, whatever the job's size); failures by error code are
read only when the failed counter moves.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobs import cost
from jobs.api import Client, JobReport
from jobs.failures import ERRORS_SCANNED
from jobs.lifecycle import JobStatus

#: Seconds of samples the watched rate is measured over.
RATE_WINDOW_S = 30.0


def overall_rate(report: JobReport, now: datetime | None = None) -> float | None:
    """Items computed per second since the job started (skipped items left out), or None before any."""
    if report.started_at is None:
        return None
    end = report.finished_at or now or datetime.now(UTC)
    started = report.started_at if report.started_at.tzinfo else report.started_at.replace(tzinfo=UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    seconds = (end - started).total_seconds()
    computed = report.done - report.skipped
    return computed / seconds if seconds > 0 and computed > 0 else None


def eta_seconds(report: JobReport, rate: float | None) -> float | None:
    """Seconds until every item has ended at `rate`, or None when unknown."""
    remaining = report.total - report.done
    if remaining <= 0:
        return 0.0
    return remaining / rate if rate else None


def format_duration(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `42s`, or `-`."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class RateMeter:
    """Items per second over the last RATE_WINDOW_S seconds of (time, done) samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, done: int) -> None:
        """Record that `done` items had ended at monotonic time `at`."""
        self.samples.append((at, done))
        while len(self.samples) > 2 and at - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def rate(self) -> float | None:
        """The rate over the window, or None with fewer than two samples or no progress yet."""
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None


def _errors_table(errors: dict[str, int], failed: int, scanned: int) -> Table:
    table = Table("error code", "items", box=None, title="failures", title_justify="left")
    for code, count in sorted(errors.items(), key=lambda pair: -pair[1]):
        table.add_row(code, f"{count:,}")
    if failed > scanned:
        table.caption = f"counted over the first {scanned:,} of {failed:,} failures"
    return table


def watch(
    client: Client,
    job_id: str,
    console: Console,
    interval: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> JobReport:
    """Show a live progress bar with rate, ETA and failures by code until the job ends; return its report."""
    report = client.status(job_id)
    meter = RateMeter()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task(f"{report.kind} {job_id[:8]}", total=report.total, rate="", eta="-", failed="")
    errors: dict[str, int] = {}
    seen_failed = -1
    with Live(Group(progress), console=console, refresh_per_second=4) as live:
        while True:
            meter.add(time.monotonic(), report.done - report.skipped)
            rate = meter.rate() or overall_rate(report)
            progress.update(
                task,
                total=report.total,
                completed=report.done,
                rate=f"{rate:,.1f} items/s" if rate else "",
                eta=format_duration(eta_seconds(report, rate)),
                failed=f"[red]{report.failed:,} failed[/red]" if report.failed else "",
            )
            if report.failed != seen_failed:
                seen_failed = report.failed
                errors = client.errors_by_code(job_id) if report.failed else {}
                parts = (
                    [progress, _errors_table(errors, report.failed, ERRORS_SCANNED)] if errors else [progress]
                )
                live.update(Group(*parts))
            if JobStatus(report.status).final:
                return report
            sleep(interval)
            report = client.status(job_id)


def parse_since(text: str) -> datetime:
    """A point in time from `90m`, `12h`, `7d` (ago) or an ISO date / datetime (UTC unless it says)."""
    from datetime import timedelta

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip()
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--since takes 90m, 12h, 7d or an ISO date, not {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _rate_text(report: JobReport) -> str:
    rate = overall_rate(report)
    if rate is None:
        return "-"
    eta = "" if report.final else f", ETA {format_duration(eta_seconds(report, rate))}"
    return f"{rate:,.1f} items/s{eta}"


def _results_text(report: JobReport) -> str:
    if report.export_url:
        return report.export_url
    if report.export_pending:
        why = f": last try failed, {report.export_error}" if report.export_error else ""
        return f"export pending{why} (the reconciler writes it)"
    return "-"


def _gpu_text(report: JobReport) -> str:
    """GPU time spent, per computed item, and (while the job runs) what the items left will take."""
    if report.gpu_seconds <= 0:
        return "-"
    spent = f"{format_duration(report.gpu_seconds)} ({report.gpu_seconds:,.1f} GPU-s"
    each = cost.per_item(report)
    spent += f", {each:,.3f} s per item)" if each is not None else ")"
    left = cost.to_finish(report)
    if report.final or not left:
        return spent
    return f"{spent}; about {format_duration(left)} more to finish"


def print_report(console: Console, report: JobReport, errors: dict[str, int]) -> None:
    """`status`: the job's row as a table, its failures by error code under it."""
    table = Table(show_header=False, box=None)
    for name, value in [
        ("job", report.id),
        ("kind", report.kind),
        ("status", report.status),
        ("priority", report.priority),
        ("items", f"{report.total} so far, the source is still read" if report.submitting else report.total),
        ("queued", report.queued),
        ("running", report.running),
        ("succeeded", report.succeeded),
        ("failed", report.failed),
        ("cancelled", report.cancelled),
        ("skipped", report.skipped),
        ("rate", _rate_text(report)),
        ("GPU time", _gpu_text(report)),
        ("created", report.created_at),
        ("started", report.started_at),
        ("finished", report.finished_at),
        ("source", report.source or None),
        ("outputs", report.output_url),
        ("results", _results_text(report)),
        ("notify", report.notification.describe() if report.notification else None),
    ]:
        table.add_row(name, escape(str(value if value is not None else "-")))
    for code, count in sorted(errors.items()):
        table.add_row(f"  {code}", str(count))
    console.print(table)


def report_json(report: JobReport, errors: dict[str, int]) -> dict[str, Any]:
    """`status --json`: the report with its failures by code, rate, ETA and GPU-seconds per item and to
    finish."""
    rate = overall_rate(report)
    return report.as_dict() | {
        "errors": errors,
        "rate": rate,
        "eta_s": eta_seconds(report, rate),
        "gpu_seconds_per_item": cost.per_item(report),
        "gpu_seconds_to_finish": cost.to_finish(report),
    }
