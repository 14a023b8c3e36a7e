"""bench/api_load.py's own arithmetic: percentiles by nearest rank, and the rule that only status requests
made wholly while the second submission was in progress count as made during it."""

from __future__ import annotations

import pytest

from tests.bench_scripts import load_bench_script

api_load = load_bench_script("api_load")
Sample = api_load.Sample
Window = api_load.Window


def test_percentiles_are_values_that_were_measured() -> None:
    ordered = [float(ms) for ms in range(1, 101)]  # 1..100 ms

    assert api_load.percentile(ordered, 50) == 50.0
    assert api_load.percentile(ordered, 99) == 99.0
    assert api_load.percentile(ordered, 100) == 100.0
    assert api_load.percentile([7.5], 99) == 7.5
    with pytest.raises(ValueError):
        api_load.percentile([], 50)


def test_a_slow_tail_shows_in_p99_and_max_not_in_p50() -> None:
    summary = api_load.summarize([3.0] * 98 + [40.0, 900.0])

    assert summary == {
        "n": 100,
        "p50_ms": 3.0,
        "p95_ms": 3.0,
        "p99_ms": 40.0,
        "max_ms": 900.0,
        "mean_ms": 12.34,
    }


def test_only_samples_wholly_inside_the_submission_count() -> None:
    window = Window(opened=10.0, closed=20.0)
    window.samples = [
        Sample(9.99, 10.01),  # started before the second job was seen submitting
        Sample(10.0, 10.004),
        Sample(15.0, 15.010),
        Sample(19.995, 20.001),  # its answer came after the submission had returned
    ]

    report = window.report()

    assert [sample.start for sample in window.inside()] == [10.0, 15.0]
    assert report["status"]["n"] == 2
    assert report["status"]["max_ms"] == 10.0
    assert report["samples_dropped"] == 2
    assert report["in_progress_throughout"] is True
    assert report["sampling_s"] == 5.01
    assert report["last_sample_before_submission_returned_s"] == 4.99


def test_a_window_without_samples_is_not_reported_as_held() -> None:
    window = Window(opened=10.0, closed=10.5, samples=[Sample(10.4, 10.6)])

    report = window.report()

    assert report["status"] == {"n": 0}
    assert report["in_progress_throughout"] is False
