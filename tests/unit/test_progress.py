"""Rates, ETAs and the live `status --watch` view, computed from job counters."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from rich.console import Console

from jobs.api import JobReport
from jobs.progress import (
    RateMeter,
    eta_seconds,
    format_duration,
    overall_rate,
    parse_since,
    report_json,
    watch,
)

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _report(**values: object) -> JobReport:
    base = JobReport(
        id="j" * 32, kind="caption", status="running", priority=0, total=1000, queued=0, running=0,
        succeeded=0, failed=0, cancelled=0, created_at=T0, started_at=T0, finished_at=None,
        output_url="/tmp/out", export_url=None, source="/tmp/in",
    )  # fmt: skip
    return replace(base, **values)  # type: ignore[arg-type]


def test_rate_leaves_skipped_items_out_and_eta_follows() -> None:
    report = _report(succeeded=700, skipped=500, failed=100)
    rate = overall_rate(report, now=T0 + timedelta(seconds=100))
    assert rate == pytest.approx(3.0)  # (700 + 100 - 500) items computed in 100 s
    assert eta_seconds(report, rate) == pytest.approx(200 / 3.0)
    assert overall_rate(_report(started_at=None)) is None
    assert eta_seconds(_report(succeeded=1000), None) == 0.0


def test_rate_meter_uses_a_sliding_window() -> None:
    meter = RateMeter(window_s=10)
    assert meter.rate() is None
    for second in range(0, 31):  # 100 items/s for 20 s, then 10 items/s
        meter.add(float(second), 100 * second if second <= 20 else 2000 + 10 * (second - 20))
    assert meter.rate() == pytest.approx(10.0)
    assert meter.samples[0][0] == 20


def test_durations_and_since() -> None:
    assert [format_duration(s) for s in (None, 42, 185, 3725)] == ["-", "42s", "3m05s", "1h02m"]
    assert datetime.now(UTC) - parse_since("90m") == pytest.approx(
        timedelta(minutes=90), abs=timedelta(seconds=5)
    )
    assert parse_since("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="90m, 12h, 7d"):
        parse_since("yesterday")


class _Client:
    """Reports a job advancing by 250 items per poll, with failures by code."""

    def __init__(self) -> None:
        self.polls = 0
        self.error_reads = 0

    def status(self, job_id: str) -> JobReport:
        done = min(1000, 250 * self.polls)
        self.polls += 1
        failed = 10 if done >= 500 else 0
        status = "partial" if done == 1000 else "running"
        return _report(succeeded=done - failed, failed=failed, status=status)

    def errors_by_code(self, job_id: str) -> dict[str, int]:
        self.error_reads += 1
        return {"invalid_image": 7, "input_missing": 3}


def test_watch_follows_the_job_until_it_ends() -> None:
    client = _Client()
    out = io.StringIO()
    report = watch(client, "j" * 32, Console(file=out, width=140), interval=0, sleep=lambda _: None)  # type: ignore[arg-type]
    assert report.status == "partial" and report.done == 1000
    assert client.error_reads == 1  # read once, when the failed counter moved, not at every poll
    text = out.getvalue()
    assert "invalid_image" in text and "1000/1000" in text


def test_status_json_writes_every_time_in_utc_with_its_offset() -> None:
    naive = datetime(2026, 11, 28, 12, 0)  # as SQLite gives it back: written in UTC
    paris = datetime(2026, 11, 28, 13, 30, tzinfo=timezone(timedelta(hours=1)))  # a session's zone
    status = report_json(_report(created_at=naive, started_at=paris, finished_at=None), {})

    assert (status["created_at"], status["started_at"], status["finished_at"]) == (
        "2026-11-28T12:00:00+00:00",
        "2026-11-28T12:30:00+00:00",
        None,
    )
    assert datetime.fromisoformat(status["started_at"]) == paris
