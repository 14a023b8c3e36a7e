"""Two real workers and Flower on Redis, PostgreSQL and moto_server: priority, Flower, graceful stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.plugins.services import free_port
from tests.plugins.workers import BIN, Stack, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

AUTH = ("admin", "s3cret-flower")
#: Far longer than a graceful stop takes: a worker still there after it never stops.
STOP_TIMEOUT_S = 120


@pytest.fixture
def flower(stack: Stack, tmp_path: Path) -> Iterator[str]:
    """A real Flower on the stack's broker, with basic auth; yields its base URL."""
    port = free_port()
    env = dict(stack.env, OVIS_BATCH_FLOWER_BASIC_AUTH=":".join(AUTH))
    log = tmp_path / "flower.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(BIN / "ovis-batch"), "flower", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/healthcheck", timeout=1).status_code == 200
        except requests.RequestException:
            return process.poll() is not None

    wait_for(up, 60, "Flower did not start")
    assert process.poll() is None, log.read_text()
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _submit(stack: Stack, *args: str) -> str:
    return stack.cli("submit", *args).stdout.split()[-1]


def _job_rows(stack: Stack, sql: str, **params: object) -> list[dict[str, object]]:
    return stack.rows(sql, **params)


def _prompts(path: Path, count: int) -> str:
    path.write_text("".join(f"prompt number {i}\n" for i in range(count)))
    return str(path)


def test_urgent_job_overtakes_and_flower_sees_it(
    stack: Stack, start_worker: Callable[..., WorkerProcess], flower: str
) -> None:
    # Both jobs wait in the queue before any worker consumes, the urgent one submitted last: it comes out
    # first by its priority alone, whatever the machine's load makes of the time between two commands.
    overnight = _submit(
        stack, "generate", "--input", _prompts(stack.home / "long.txt", 48), "--priority", "0"
    )
    urgent = _submit(stack, "generate", "--input", _prompts(stack.home / "urgent.txt", 4), "--priority", "9")
    env = dict(stack.env, OVIS_BATCH_FAKE_MS_PER_ITEM="150")
    for name in ("w1", "w2"):
        start_worker("--gpus", "none", "--node", f"{name}@%h", env=env)

    def final(job: str) -> bool:
        rows = _job_rows(stack, "SELECT status FROM jobs WHERE id = :j", j=job)
        return rows[0]["status"] == "succeeded"

    wait_for(lambda: final(urgent) and final(overnight), 240, "jobs did not finish")
    times = {
        r["id"]: r["finished_at"]
        for r in _job_rows(
            stack, "SELECT id, finished_at FROM jobs WHERE id IN (:a, :b)", a=urgent, b=overnight
        )
    }
    assert times[urgent] < times[overnight]

    def both_workers_seen() -> bool:
        workers = requests.get(f"{flower}/api/workers?refresh=1", auth=AUTH, timeout=60).json()
        return {name.split("@")[0] for name in workers} >= {"w1", "w2"}

    wait_for(both_workers_seen, 120, "Flower does not list both workers")
    assert requests.get(f"{flower}/api/workers", timeout=10).status_code == 401

    def urgent_tasks_succeeded() -> bool:
        tasks = requests.get(f"{flower}/api/tasks", auth=AUTH, timeout=10).json()
        mine = [t for t in tasks.values() if urgent in str(t.get("args"))]
        return bool(mine) and all(t["state"] == "SUCCESS" for t in mine)

    wait_for(urgent_tasks_succeeded, 120, "Flower does not show the urgent job's tasks as succeeded")
    tasks = requests.get(f"{flower}/api/tasks", auth=AUTH, timeout=10).json()
    # Chunk tasks keep their fixed name; the arguments say the job and the range of items each one holds.
    assert {t["name"] for t in tasks.values()} == {"ovis.generate"}
    assert str([urgent, 0, 4]) in {t.get("args") for t in tasks.values()}
    assert "flower_events_total" in requests.get(f"{flower}/metrics", timeout=10).text

    metrics = stack.cli("metrics").stdout
    assert 'ovis_batch_jobs{kind="generate",status="succeeded"} 2' in metrics
    assert "ovis_batch_queue_depth" in metrics


def test_sigterm_mid_job_loses_nothing(stack: Stack, start_worker: Callable[..., WorkerProcess]) -> None:
    env = dict(
        stack.env,
        OVIS_BATCH_FAKE_MS_PER_ITEM="100",
        OVIS_BATCH_GENERATE_BATCH="2",
        OVIS_BATCH_CHUNK_SIZE="8",
        OVIS_BATCH_RECONCILE_INTERVAL_S="2",
    )
    first = start_worker("--gpus", "none", "--node", "first@%h", env=env)
    job = _submit(stack, "generate", "--input", _prompts(stack.home / "p.txt", 32))
    wait_for(
        lambda: _job_rows(stack, "SELECT n_succeeded FROM jobs WHERE id = :j", j=job)[0]["n_succeeded"] >= 4,
        60,
        "the first worker made no progress",
    )
    second = start_worker("--gpus", "none", "--node", "second@%h", env=env)
    assert first.stop(signal.SIGTERM, timeout=STOP_TIMEOUT_S) == 0, first.text()[-3000:]
    wait_for(
        lambda: _job_rows(stack, "SELECT status FROM jobs WHERE id = :j", j=job)[0]["status"] == "succeeded",
        180,
        "the job did not complete on the second worker",
    )
    items = _job_rows(stack, "SELECT key, status, output, worker FROM items WHERE job_id = :j", j=job)
    assert len(items) == 32 and all(i["status"] == "succeeded" for i in items)
    assert {str(i["worker"]).split(":")[0] for i in items}  # recorded by real worker processes
    report = json.loads(stack.cli("status", job, "--json").stdout)
    assert (report["succeeded"], report["failed"], report["queued"], report["running"]) == (32, 0, 0, 0)
    assert second.process.poll() is None
