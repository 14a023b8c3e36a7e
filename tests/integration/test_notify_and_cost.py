"""Notifications and GPU-seconds on the real stack (PostgreSQL, Redis, moto_server, `ovis-batch worker`
processes): a job submitted with --notify-url is notified by a worker's reconciler, a receiver that fails
until the worker is killed gets the notification from the worker started after it, signed, under one
delivery id; the job's GPU-seconds are its items' sum and its worker's."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable
from typing import Any

import pytest

from tests.plugins.workers import Stack, WorkerProcess, wait_for
from tests.webhook_receiver import receiving

pytestmark = pytest.mark.integration

SECRET = "whsec-integration-7c1e"


def _env(stack: Stack) -> dict[str, str]:
    return stack.env | {
        "OVIS_BATCH_NOTIFY_SECRET": SECRET,
        "OVIS_BATCH_NOTIFY_BACKOFF_S": "0.5",
        "OVIS_BATCH_NOTIFY_TIMEOUT_S": "5",
        "OVIS_BATCH_RECONCILE_INTERVAL_S": "1",
        "OVIS_BATCH_FAKE_MS_PER_ITEM": "5",
    }


def _notification(stack: Stack, job_id: str) -> dict[str, Any]:
    sql = (
        "SELECT notify_state, notify_attempts, notify_last_status, notify_delivery_id, gpu_seconds "
        "FROM jobs WHERE id = :j"
    )
    return stack.rows(sql, j=job_id)[0]


def test_a_notification_survives_a_worker_killed_while_the_receiver_fails(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    env = _env(stack)
    prompts = stack.home / "prompts.txt"
    prompts.write_text("".join(f"a red fox number {n}\n" for n in range(6)))
    with receiving([503], secret=SECRET) as receiver:
        out = stack.cli("submit", "generate", "--input", str(prompts), "--notify-url", receiver.url)
        job_id = out.stdout.split()[-1]
        worker = start_worker("--gpus", "none", env=env)
        wait_for(lambda: len(receiver.posts()) >= 2, 90, "the worker did not try to notify, twice")
        worker.stop(signal.SIGKILL)
        tried = _notification(stack, job_id)
        assert (tried["notify_state"], tried["notify_last_status"]) == ("pending", 503)

        receiver.then(200)
        start_worker("--gpus", "none", env=env)
        wait_for(
            lambda: _notification(stack, job_id)["notify_state"] == "delivered",
            90,
            "the worker started after the kill did not deliver the notification",
        )
        posts = receiver.posts()

    done = _notification(stack, job_id)
    assert done["notify_attempts"] == len(posts) and done["notify_last_status"] == 200
    assert all(post.signed for post in posts), "every attempt is signed"
    assert {post.headers["x-ovis-batch-delivery"] for post in posts} == {done["notify_delivery_id"]}
    body = posts[-1].json()
    assert (body["job_id"], body["status"], body["counters"]["succeeded"]) == (job_id, "succeeded", 6)
    assert body["results_url"] == f"s3://{stack.bucket}/outputs/{job_id}/results.jsonl"
    assert body["gpu_seconds"] == pytest.approx(done["gpu_seconds"], abs=0.001)

    shown = stack.cli("status", job_id[:8])
    assert f"delivered to {receiver.url}" in " ".join(shown.stdout.split())


def test_gpu_seconds_are_the_items_sum_and_the_workers(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    env = _env(stack)
    prompts = stack.home / "prompts.txt"
    prompts.write_text("".join(f"a boat number {n}\n" for n in range(10)))
    job_id = stack.cli("submit", "generate", "--input", str(prompts)).stdout.split()[-1]
    start_worker("--gpus", "none", env=env)
    wait_for(
        lambda: json.loads(stack.cli("status", job_id, "--json").stdout)["status"] == "succeeded",
        90,
        "the job did not finish",
    )

    (items,) = stack.rows(
        "SELECT sum(gpu_seconds) AS s, min(gpu_seconds) AS m FROM items WHERE job_id = :j", j=job_id
    )
    status = json.loads(stack.cli("status", job_id, "--json").stdout)
    assert items["m"] >= 0.005, "every item was charged its model call"
    assert status["gpu_seconds"] == pytest.approx(items["s"])
    assert status["gpu_seconds_to_finish"] == 0
    (worker,) = stack.rows("SELECT worker, kind, items_ended, gpu_seconds FROM worker_totals")
    assert (worker["worker"], worker["kind"], worker["items_ended"]) == (
        f"ovis@{socket.gethostname()}",
        "generate",
        10,
    )
    assert worker["gpu_seconds"] == pytest.approx(items["s"])
    metrics = stack.cli("metrics").stdout
    assert 'ovis_batch_gpu_seconds_total{kind="generate"}' in metrics
    assert (
        f'ovis_batch_worker_items_total{{kind="generate",worker="ovis@{socket.gethostname()}"}} 10.0'
        in metrics
    )
