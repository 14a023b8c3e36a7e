"""What Flower and `ovis-batch ping` say about a worker while it runs a long chunk, and about one that hangs.

A real worker, a real Flower (its HTTP API, with auth) on Redis and PostgreSQL. Nothing here depends on
timing: every check polls until its condition holds, and the chunk is long only so that there is a "while".
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.test_deployment import AUTH, flower  # noqa: F401 - the Flower fixture
from tests.plugins.workers import Stack, WorkerProcess, wait_for
from workers.watchdog import EXIT_STALLED

pytestmark = pytest.mark.integration

TASK_NAMES = {"ovis.caption", "ovis.generate", "ovis.edit"}


def _prompts(path: Path, texts: list[str]) -> str:
    path.write_text("".join(f"{text}\n" for text in texts))
    return str(path)


def _submit(stack: Stack, texts: list[str], chunk_size: int) -> str:
    stack.env["OVIS_BATCH_CHUNK_SIZE"] = str(chunk_size)  # the producer cuts the chunks
    source = _prompts(stack.home / "p.txt", texts)
    return stack.cli("submit", "generate", "--input", source).stdout.split()[-1]


def _job(stack: Stack, job_id: str) -> dict[str, Any]:
    return stack.rows("SELECT * FROM jobs WHERE id = :j", j=job_id)[0]


def _tasks_of(flower_url: str, job_id: str) -> list[dict[str, Any]]:
    tasks = requests.get(f"{flower_url}/api/tasks", auth=AUTH, timeout=10).json()
    return [task for task in tasks.values() if job_id in str(task.get("args"))]


def test_a_busy_worker_is_online_answers_ping_and_shows_its_running_task_with_progress(
    stack: Stack,
    start_worker: Callable[..., WorkerProcess],
    flower: str,  # noqa: F811 - the fixture imported above
) -> None:
    env = dict(
        stack.env,
        OVIS_BATCH_FAKE_MS_PER_ITEM="250",
        OVIS_BATCH_GENERATE_BATCH="2",
    )
    node = f"truth@{socket.gethostname()}"
    start_worker("--gpus", "none", "--node", node, env=env)
    job_id = _submit(stack, [f"prompt {i}" for i in range(40)], chunk_size=40)
    wait_for(lambda: _job(stack, job_id)["n_succeeded"] >= 2, 60, "the chunk made no progress")

    # While the chunk runs: the worker is online in Flower and answers ping within a few seconds.
    seen: dict[str, bool] = {}

    def observed_while_running() -> bool:
        status = requests.get(f"{flower}/api/workers?status=1", auth=AUTH, timeout=10).json()
        seen["online"] = status.get(node) is True
        ping = stack.cli("ping", "--node", node, "--timeout", "5", check=False)
        seen["ping"] = ping.returncode == 0 and "busy" in ping.stdout
        tasks = _tasks_of(flower, job_id)
        running = [t for t in tasks if t["state"] in ("STARTED", "PROGRESS")]
        seen["task"] = bool(running) and all(
            t["name"] == "ovis.generate"
            and t["worker"] == node
            and json.loads(t["args"].replace("'", '"')) == [job_id, 0, 40]
            for t in running
        )
        seen["progress"] = any(re.search(r"items/s; job [0-9.]+%", str(t.get("result"))) for t in running)
        return all(seen.values())

    wait_for(
        lambda: _job(stack, job_id)["status"] == "succeeded" or observed_while_running(),
        120,
        f"not observed while the chunk ran: {seen}",
    )
    assert _job(stack, job_id)["status"] != "succeeded" and all(seen.values()), seen

    # Online throughout: every sample of Flower's worker status until the chunk ends says so.
    samples: list[bool] = []

    def sampled_until_the_end() -> bool:
        status = requests.get(f"{flower}/api/workers?status=1", auth=AUTH, timeout=10).json()
        samples.append(status.get(node) is True)
        return _job(stack, job_id)["status"] == "succeeded"

    wait_for(sampled_until_the_end, 120, "the job did not finish")
    assert samples and all(samples), f"offline in {samples.count(False)} of {len(samples)} samples"

    def succeeded() -> list[dict[str, Any]]:
        return [t for t in _tasks_of(flower, job_id) if t["state"] == "SUCCESS"]

    wait_for(lambda: bool(succeeded()), 30, "Flower does not show the chunk as succeeded")
    result = str(succeeded()[0]["result"])
    assert "'succeeded': 40" in result and "'model_s'" in result

    # Metrics stay bounded: fixed task names, progress events from the task's own worker, no phantom worker.
    metrics = requests.get(f"{flower}/metrics", timeout=10).text
    series = re.findall(r'flower_events_total\{task="([^"]*)",type="([^"]*)",worker="([^"]*)"\}', metrics)
    assert series, metrics[:2000]
    assert {task for task, _, _ in series} <= TASK_NAMES
    assert {worker for _, _, worker in series} == {node}
    assert ("ovis.generate", "task-progress", node) in series


def test_a_worker_whose_model_call_hangs_is_reported_restarted_and_the_input_quarantined(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    env = dict(
        stack.env,
        OVIS_BATCH_FAKE_HANG_MARKER="HANGS-THE-MODEL",
        OVIS_BATCH_STALL_TIMEOUT_S="3",
        OVIS_BATCH_GENERATE_BATCH="1",
        OVIS_BATCH_MAX_ATTEMPTS="2",
        OVIS_BATCH_RECONCILE_INTERVAL_S="2",
    )
    prompts = ["first", "second HANGS-THE-MODEL", "third", "fourth", "fifth", "sixth"]
    # A supervisor over one GPU slot: it starts the worker again each time the watchdog ends it.
    supervisor = start_worker("--gpus", "0", env=env)
    node = f"ovis-gpu0@{socket.gethostname()}"
    assert stack.cli("ping", "--node", node, check=False).returncode == 0  # idle: live
    job_id = _submit(stack, prompts, chunk_size=4)
    # While the model call hangs, ping fails: the worker says it is stalled, or no longer answers.
    wait_for(
        lambda: stack.cli("ping", "--node", node, "--timeout", "2", check=False).returncode != 0,
        120,
        "ping never failed for the hung worker",
    )
    wait_for(lambda: _job(stack, job_id)["status"] == "partial", 180, "the job did not end")
    items = {
        row["text"]: row
        for row in stack.rows(
            "SELECT text, status, error_code, attempts FROM items WHERE job_id = :j", j=job_id
        )
    }
    hung = items.pop("second HANGS-THE-MODEL")
    assert hung["status"] == "failed" and hung["attempts"] == 2, hung
    # The items that waited behind the hung call were not charged for it: each succeeded at its one attempt.
    assert all(row["status"] == "succeeded" and row["attempts"] == 1 for row in items.values()), items
    log = supervisor.text()
    assert log.count("stalled: no progress") >= 2, log[-4000:]
    assert "job " + job_id in log[log.index("stalled: no progress") :].splitlines()[0]
    assert f"exited with {EXIT_STALLED}; restarting" in log, log[-4000:]
