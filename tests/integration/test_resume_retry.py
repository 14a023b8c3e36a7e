"""Doing less work on the real stack (PostgreSQL, Redis, moto_server, `ovis-batch worker` processes):
a job interrupted mid-way and resumed, `retry --failed`, `--skip-existing`, and exports while it runs."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import write_photos
from tests.plugins.workers import Stack, WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def _items(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    sql = "SELECT key, status, output, attempts, finished_at FROM items WHERE job_id = :j ORDER BY seq"
    return stack.rows(sql, j=job_id)


def _count(stack: Stack, job_id: str, status: str) -> int:
    return sum(1 for item in _items(stack, job_id) if item["status"] == status)


def _job(stack: Stack, job_id: str) -> dict[str, Any]:
    return json.loads(stack.cli("status", job_id, "--json").stdout)


def _submit(stack: Stack, *args: str) -> str:
    return stack.cli("submit", "caption", *args).stdout.split()[-1]


def _env(stack: Stack, **extra: str) -> dict[str, str]:
    # No reconciler in these workers: what happens to the job is what the test does.
    return stack.env | {"OVIS_BATCH_RECONCILE_INTERVAL_S": "0"} | extra


def test_a_job_interrupted_midway_is_resumed_without_redoing_finished_items(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    write_photos(stack.home / "photos", count=40, size=48)
    job_id = _submit(stack, "--input", str(stack.home / "photos"))
    slow = start_worker(env=_env(stack, OVIS_BATCH_FAKE_MS_PER_ITEM="80"))
    wait_for(lambda: _count(stack, job_id, "succeeded") >= 8, 60, "the first worker made no progress")
    slow.stop(signal.SIGKILL)  # a crash: its claimed items stay leased, its message unacknowledged

    before = {item["key"]: item for item in _items(stack, job_id) if item["status"] == "succeeded"}
    assert 8 <= len(before) < 40
    partial = stack.home / "partial.jsonl"
    stack.cli("export", job_id, "--out", str(partial))
    rows = [json.loads(line) for line in partial.read_text().splitlines()]
    assert len(rows) == 40 and sum(row["status"] == "succeeded" for row in rows) == len(before)

    resumed = stack.cli("resume", job_id, "--release-running").stdout
    assert f"re-dispatched {40 - len(before)} items" in resumed
    start_worker(env=_env(stack))
    wait_for(lambda: _job(stack, job_id)["status"] == "succeeded", 90, "the resumed job did not finish")

    items = {item["key"]: item for item in _items(stack, job_id)}
    assert all(item["status"] == "succeeded" and item["output"] for item in items.values())
    for key, item in before.items():  # finished before the crash: kept, not computed again
        assert (items[key]["output"], items[key]["attempts"]) == (item["output"], 1)
        assert items[key]["finished_at"] == item["finished_at"]
    # Outputs follow ids: the photos repeat every four files, and so do their captions.
    assert (
        items["photo000.jpg"]["output"] == items["photo004.jpg"]["output"] == items["photo036.jpg"]["output"]
    )
    assert items["photo000.jpg"]["output"] != items["photo001.jpg"]["output"]


def test_retry_failed_redoes_only_the_failed_items_and_skip_existing_keeps_outputs(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    photos = write_photos(stack.home / "photos", count=12, size=48)
    good = {path: path.read_bytes() for path in photos}
    for path in photos[3:6]:
        path.write_bytes(b"truncated")
    start_worker(env=_env(stack))
    job_id = _submit(stack, "--input", str(stack.home / "photos"))
    watched = stack.cli("status", job_id, "--watch", "--interval", "0.3").stdout
    assert "partial" in watched and "invalid_image" in watched
    first = {item["key"]: item for item in _items(stack, job_id)}
    assert sum(item["status"] == "failed" for item in first.values()) == 3

    for path in photos[3:6]:
        path.write_bytes(good[path])
    assert "queued 3 failed items" in stack.cli("retry", job_id, "--failed").stdout
    wait_for(lambda: _job(stack, job_id)["status"] == "succeeded", 60, "the retried items did not finish")
    after = {item["key"]: item for item in _items(stack, job_id)}
    for key, item in first.items():
        if item["status"] == "succeeded":
            assert (after[key]["finished_at"], after[key]["attempts"]) == (item["finished_at"], 1)
        else:
            assert after[key]["status"] == "succeeded" and after[key]["output"]

    # Two new photos, and photo000.jpg replaced by another picture under the same name: a new job keeps the
    # eleven captions made from the same bytes and computes three.
    write_photos(stack.home / "more", count=2, size=48)
    for index, path in enumerate(sorted((stack.home / "more").iterdir())):
        path.rename(stack.home / "photos" / f"new{index}.jpg")
    (stack.home / "photos" / "photo000.jpg").write_bytes(good[photos[1]])
    again = _submit(stack, "--input", str(stack.home / "photos"), "--skip-existing")
    wait_for(lambda: _job(stack, again)["status"] == "succeeded", 60, "the second job did not finish")
    report = _job(stack, again)
    assert (report["total"], report["skipped"], report["succeeded"]) == (14, 11, 14)
    second = {item["key"]: item for item in _items(stack, again)}
    assert all(second[key]["output"] == after[key]["output"] for key in after if key != "photo000.jpg")
    # The replaced photo got the caption of its new picture, not the one kept for its name.
    assert second["photo000.jpg"]["output"] == after["photo001.jpg"]["output"]
    assert second["photo000.jpg"]["output"] != after["photo000.jpg"]["output"]
