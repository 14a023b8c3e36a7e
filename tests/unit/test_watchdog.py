"""Liveness means making progress: what a worker answers to `ping`, and what its watchdog does on a stall."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from tests.plugins.workers import wait_for
from workers.health import Liveness, Snapshot, assess
from workers.runtime import WorkerRuntime
from workers.watchdog import EXIT_STALLED, Watchdog, describe, worker_health


def _quiet(liveness: Liveness, seconds: float) -> Snapshot:
    snapshot = liveness.snapshot()
    return Snapshot(snapshot.running, seconds, snapshot.chunks_done, snapshot.in_model)


def test_idle_busy_and_stalled() -> None:
    liveness = Liveness()
    assert assess(liveness.snapshot(), 10).state == "idle"
    liveness.chunk_started("caption", "job1", 0, 256)
    busy = assess(_quiet(liveness, 9.0), 10)
    assert (busy.ok, busy.state) == (True, "busy")
    assert "job job1 items 0-256" in busy.detail
    stalled = assess(_quiet(liveness, 11.0), 10)
    assert (stalled.ok, stalled.state) == (False, "stalled")
    assert stalled.as_reply()["job_id"] == "job1"
    liveness.chunk_ended()
    assert assess(_quiet(liveness, 1000.0), 10).ok  # idle: nothing to progress on


def test_the_items_in_the_model_are_known_until_the_call_returns() -> None:
    liveness = Liveness()
    liveness.chunk_started("edit", "job1", 0, 8)
    liveness.model_started([2, 3])
    assert liveness.snapshot().in_model == frozenset({2, 3})
    liveness.model_ended()
    assert liveness.snapshot().in_model == frozenset()


def test_ping_fails_naming_a_stalled_or_silent_worker() -> None:
    idle = {"ok": True, "state": "idle", "detail": "idle, 3 chunks done"}
    stalled = {"ok": False, "state": "stalled", "detail": "stalled: no progress for 901s on job j items 0-8"}
    assert describe({"a@h": idle}, 5) == (True, ["a@h: idle, 3 chunks done"])
    live, lines = describe({"a@h": idle, "b@h": stalled, "c@h": None}, 5)
    assert not live
    assert lines[1].startswith("b@h: stalled") and lines[2] == "c@h: no answer within 5s"
    assert describe({}, 5)[0] is False


def test_a_prefork_parent_answers_for_its_pool() -> None:
    assert worker_health(None, 10)["ok"] is True


def test_a_stalled_worker_hands_its_chunk_back_blaming_the_items_in_the_model_and_exits() -> None:
    handed: list[frozenset[int]] = []
    exits: list[int] = []
    liveness = Liveness()
    liveness.chunk_started("generate", "job1", 0, 4, handed.append)
    liveness.model_started([1])
    runtime = cast(WorkerRuntime, SimpleNamespace(liveness=liveness, name="host:1"))
    watchdog = Watchdog(runtime, 0.01, exit_process=exits.append)
    snapshot = _quiet(liveness, 1.0)
    watchdog.stalled(assess(snapshot, 0.01), snapshot.in_model)
    assert handed == [frozenset({1})]
    assert exits == [EXIT_STALLED]


def test_the_watchdog_thread_acts_only_on_a_stall() -> None:
    exits: list[Any] = []
    liveness = Liveness()
    runtime = cast(WorkerRuntime, SimpleNamespace(liveness=liveness, name="host:1"))
    watchdog = Watchdog(runtime, 0.05, exit_process=exits.append)
    handed: list[frozenset[int]] = []
    liveness.chunk_started("caption", "job1", 0, 4, handed.append)
    watchdog.start()
    wait_for(lambda: bool(exits), 30, "the watchdog did not act on a chunk with no beats")
    watchdog.stop()
    assert exits == [EXIT_STALLED] and handed == [frozenset()]
