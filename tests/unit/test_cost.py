"""GPU-seconds: each model call's time shared among its items, summed per item, per job and per worker, the
estimate to finish, and what `status`, `list` and the JSON show of it."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import select

import workers.batches
from gpu_model.fake import FakeBackend
from jobs import cost
from jobs.api import Client, JobReport
from jobs.db import session_scope
from jobs.lifecycle import JobKind
from jobs.models import Item, WorkerTotals
from jobs.progress import print_report, report_json
from tests.helpers import embedded_settings, write_photos
from tests.unit.test_batches import Picky, _batches, _caption
from workers.embedded import EmbeddedRunner


class StepClock:
    """A perf_counter that moves by `step` seconds at each read: every model call lasts exactly `step`."""

    def __init__(self, step: float) -> None:
        self.step, self.now = step, 0.0

    def perf_counter(self) -> float:
        self.now += self.step
        return self.now


def test_a_model_call_is_shared_evenly_among_its_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers.batches, "time", StepClock(2.0))
    results = _batches(tmp_path, FakeBackend()).run([_caption(seq) for seq in range(4)])
    assert results.gpu_seconds == {seq: pytest.approx(0.5) for seq in range(4)}


def test_split_and_failed_calls_are_charged_to_the_items_in_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers.batches, "time", StepClock(1.0))
    backend = Picky(fits=2)
    results = _batches(tmp_path, backend).run([_caption(seq) for seq in range(5)])
    # Out of memory at 5 and 3: [0..4] -> [0, 1] + [2, 3, 4] -> [2] + [3, 4]; each call lasts 1 s.
    assert backend.batches == [5, 2, 3, 1, 2]
    expected = {0: 1 / 5 + 1 / 2, 1: 1 / 5 + 1 / 2, 2: 1 / 5 + 1 / 3 + 1, 3: 1 / 5 + 1 / 3 + 1 / 2}
    expected[4] = expected[3]
    assert results.gpu_seconds == pytest.approx(expected)
    assert sum(results.gpu_seconds.values()) == pytest.approx(len(backend.batches))


def test_items_that_skip_the_model_cost_nothing(tmp_path: Path) -> None:
    reused = _caption(1)
    reused.reused = "an earlier caption"
    results = _batches(tmp_path, FakeBackend()).run([_caption(0), reused])
    assert set(results.gpu_seconds) == {0}


def test_a_job_costs_the_sum_of_its_items_and_its_worker_counts_them(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, fake_ms_per_item=4.0, chunk_size=4, read_ahead=False)
    photos = tmp_path / "photos"
    write_photos(photos, count=5)
    (photos / "broken.jpg").write_bytes(b"not an image")

    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(photos))

    assert (report.succeeded, report.failed) == (5, 1)
    with session_scope(settings.resolved_database_url) as session:
        spent = dict(
            session.execute(select(Item.key, Item.gpu_seconds).where(Item.job_id == report.id)).all()
        )
        totals = session.execute(select(WorkerTotals.items_ended, WorkerTotals.gpu_seconds)).all()
    assert spent["broken.jpg"] is None, "an input that never reached the model cost no model time"
    computed = [seconds for key, seconds in spent.items() if key != "broken.jpg"]
    assert all(seconds is not None and seconds >= 0.004 for seconds in computed)
    assert report.gpu_seconds == pytest.approx(sum(s for s in computed if s is not None))
    assert totals == [(6, pytest.approx(report.gpu_seconds))]
    exported = {row["id"]: row["gpu_seconds"] for row in Client(settings).iter_results(report.id)}
    assert exported == spent, "exports and results.jsonl carry each item's GPU-seconds"


def _report(**values: Any) -> JobReport:
    base: dict[str, Any] = {
        "id": "0123456789abcdef0123456789abcdef",
        "kind": "caption",
        "status": "running",
        "priority": 0,
        "total": 100,
        "queued": 60,
        "running": 0,
        "succeeded": 30,
        "failed": 10,
        "cancelled": 0,
        "created_at": None,
        "started_at": None,
        "finished_at": None,
        "output_url": "/tmp/out",
        "export_url": None,
        "source": "photos/",
        "gpu_seconds": 80.0,
    }
    return JobReport(**(base | values))


def test_the_estimate_to_finish_is_the_cost_per_ended_item_times_the_items_left() -> None:
    report = _report()
    assert cost.per_item(report) == pytest.approx(2.0)
    assert cost.to_finish(report) == pytest.approx(120.0)
    # Reused outputs cost nothing: the cost per item leaves them out.
    assert cost.per_item(replace(report, skipped=20)) == pytest.approx(4.0)
    assert cost.to_finish(replace(report, gpu_seconds=0.0)) is None
    assert cost.to_finish(replace(report, status="succeeded", queued=0, succeeded=90)) == 0


def test_status_and_its_json_show_the_gpu_time_spent_and_to_finish() -> None:
    report = _report()
    out = io.StringIO()
    print_report(Console(file=out, width=200), report, {})
    line = next(line for line in out.getvalue().splitlines() if line.strip().startswith("GPU time"))
    assert "1m20s (80.0 GPU-s, 2.000 s per item); about 2m00s more to finish" in line

    data = report_json(report, {})
    assert (data["gpu_seconds"], data["gpu_seconds_per_item"], data["gpu_seconds_to_finish"]) == (80, 2, 120)


def test_list_shows_each_jobs_gpu_time_and_source(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, fake_ms_per_item=2.0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    job_id = EmbeddedRunner(settings).run(JobKind.GENERATE, str(prompts)).id

    (listed,) = Client(settings).list()
    assert (listed.id, listed.source) == (job_id, str(prompts))
    assert listed.gpu_seconds > 0 and listed.as_dict()["gpu_seconds"] == listed.gpu_seconds
