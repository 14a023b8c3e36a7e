"""Stopping real worker processes: the per-GPU supervisor and a prefork CPU worker, each sent SIGTERM.

What must hold: every process ends (the supervisor too, with status 0 after a clean stop), and chunks under
way stop at their next micro-batch, handing their unfinished items back with the attempt taken back, so that
another worker finishes them.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.plugins.workers import Stack, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

#: Far longer than a stop takes: a process still there after it never stops.
STOP_TIMEOUT_S = 60


def _prompts(stack: Stack, name: str, count: int) -> str:
    path = stack.home / f"{name}.txt"
    path.write_text("".join(f"{name} prompt {i}\n" for i in range(count)))
    return str(path)


def _submit(stack: Stack, env: dict[str, str], source: str) -> str:
    result = Stack(env=env, bucket=stack.bucket, home=stack.home).cli("submit", "generate", "--input", source)
    return result.stdout.split()[-1]


def _items(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    sql = "SELECT seq, status, attempts, worker FROM items WHERE job_id = :j ORDER BY seq"
    return stack.rows(sql, j=job_id)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_the_gpu_supervisor_while_a_crashed_child_waits_for_its_restart(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    # `--gpus 0,1` needs no GPU: the children of the fake backend only get CUDA_VISIBLE_DEVICES set.
    supervisor = start_worker("--gpus", "0,1", env=stack.env, wait=False)
    wait_for(lambda: supervisor.text().count(" ready.") >= 2, 120, "the two children never became ready")
    started = re.findall(r"started worker for GPU (\d+) \(pid (\d+)\)", supervisor.text())
    children = {gpu: int(pid) for gpu, pid in started}
    assert set(children) == {"0", "1"}, supervisor.text()[-3000:]
    os.kill(children["1"], signal.SIGKILL)
    wait_for(lambda: "restarting in" in supervisor.text(), 30, "the supervisor never saw its child die")
    assert supervisor.stop(signal.SIGTERM, timeout=STOP_TIMEOUT_S) == 0, supervisor.text()[-3000:]
    pids = [int(pid) for pid in re.findall(r"started worker for GPU \d+ \(pid (\d+)\)", supervisor.text())]
    assert not [pid for pid in pids if _alive(pid)], "a child outlived its supervisor"


def test_sigterm_to_a_prefork_worker_hands_its_chunks_back_at_the_next_micro_batch(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Chunks of 8 in micro-batches of 2 on a slow model: a chunk lasts several micro-batches. The lease is
    # long and the reconciler off, so that only the children's hand-back can put items back in the queue.
    env = dict(
        stack.env,
        OVIS_BATCH_FAKE_MS_PER_ITEM="400",
        OVIS_BATCH_GENERATE_BATCH="2",
        OVIS_BATCH_CHUNK_SIZE="8",
        OVIS_BATCH_LEASE_SECONDS="600",
        OVIS_BATCH_RECONCILE_INTERVAL_S="0",
    )
    worker = start_worker("--gpus", "none", "--concurrency", "2", "--node", "pre@%h", env=env)
    job_id = _submit(stack, env, _prompts(stack, "prefork", 32))

    def running_by_worker() -> dict[str, set[int]]:
        held: dict[str, set[int]] = {}
        for item in _items(stack, job_id):
            if item["status"] == "running":
                held.setdefault(item["worker"], set()).add(item["seq"])
        return held

    # Both children early in a chunk: each holds most of its chunk, several micro-batches still to run.
    wait_for(
        lambda: sum(len(seqs) >= 6 for seqs in running_by_worker().values()) >= 2,
        120,
        "the two children never ran a chunk each",
    )
    held = running_by_worker()
    assert worker.stop(signal.SIGTERM, timeout=STOP_TIMEOUT_S) == 0, worker.text()[-3000:]

    items = {item["seq"]: item for item in _items(stack, job_id)}
    assert not [seq for seq, item in items.items() if item["status"] == "running"], "items left leased"
    for child, seqs in held.items():
        back = [seq for seq in seqs if items[seq]["status"] == "queued"]
        assert back, f"child {child} ran its chunk to the end instead of handing it back"
        assert all(items[seq]["attempts"] == 0 for seq in back), "the stop charged the items an attempt"

    start_worker("--gpus", "none", "--node", "after@%h", env=env)
    wait_for(
        lambda: stack.rows("SELECT status FROM jobs WHERE id = :j", j=job_id)[0]["status"] == "succeeded",
        180,
        "the items handed back were not finished by the next worker",
    )
    items = {item["seq"]: item for item in _items(stack, job_id)}
    assert {item["status"] for item in items.values()} == {"succeeded"}
    # Each item ran to its result once: the run the stop cut short does not count.
    assert {item["attempts"] for item in items.values()} == {1}
