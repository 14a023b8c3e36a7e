"""Faults with real worker processes and real services.

Every scenario runs a generate job (each item writes one S3 object under its deterministic key) through a
fault and ends with every item final, none lost, and exactly one object per completed item plus the job's
results.jsonl. Each prints one line (see it with ``pytest -s``) and asserts what it says.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from jobs.keys import output_key
from tests.helpers import write_photos
from tests.plugins.services import ThrowawayPostgres, ThrowawayRedis, free_port
from tests.plugins.workers import Stack, WorkerProcess, wait_for
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

CRASH_MARKER = "__crash_worker__"
#: Short leases and a reconciler pass every second, so that recovery takes seconds, not minutes.
FAST = {
    "OVIS_BATCH_LEASE_SECONDS": "3",
    "OVIS_BATCH_RECONCILE_INTERVAL_S": "1",
    "OVIS_BATCH_FAKE_MS_PER_ITEM": "100",
    "OVIS_BATCH_GENERATE_BATCH": "2",
    "OVIS_BATCH_CHUNK_SIZE": "4",
}
FINAL_ITEM_STATES = ("succeeded", "failed", "cancelled")
#: Far longer than a graceful stop takes: a worker still there after it never stops.
STOP_TIMEOUT_S = 120
#: What a worker logs when a chunk of its own met an outage of the database or of storage.
DB_FAULT = "hit database_unavailable"
STORAGE_FAULT = "hit storage_unavailable"
#: What Celery logs when a worker's connection to the broker breaks, and when it has connected.
BROKER_LOST = "Connection to broker lost"
BROKER_CONNECTED = "Connected to redis://"


class Records:
    """The job's and items' rows, read straight from the database; None while the database is down."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url, pool_pre_ping=True)

    def rows(self, sql: str, **params: object) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(text(sql), params)]

    def job(self, job_id: str) -> dict[str, Any] | None:
        try:
            return self.rows("SELECT * FROM jobs WHERE id = :j", j=job_id)[0]
        except SQLAlchemyError:
            return None

    def items(self, job_id: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM items WHERE job_id = :j ORDER BY seq", j=job_id)

    def close(self) -> None:
        self.engine.dispose()


@dataclass
class Outcome:
    """What one scenario ended with."""

    scenario: str
    submitted: int
    completed: int
    failed: int
    cancelled: int
    lost: int
    duplicates: int
    rerun: int
    seconds: float

    def line(self) -> str:
        return (
            f"FAULT {self.scenario}: submitted={self.submitted} completed={self.completed} "
            f"failed={self.failed} cancelled={self.cancelled} lost={self.lost} duplicates={self.duplicates} "
            f"re-run={self.rerun} wall={self.seconds:.1f}s"
        )


@pytest.fixture
def records(stack: Stack) -> Iterator[Records]:
    """Rows of the default stack's database."""
    db = Records(stack.env["OVIS_BATCH_DATABASE_URL"])
    yield db
    db.close()


def _env(stack: Stack, **overrides: str) -> dict[str, str]:
    return {**stack.env, **FAST, **overrides}


def _prompts(stack: Stack, name: str, count: int, crash_at: int | None = None) -> str:
    lines = [f"{name} prompt {i}" + (f" {CRASH_MARKER}" if i == crash_at else "") for i in range(count)]
    path = stack.home / f"{name}.txt"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _submit(stack: Stack, env: dict[str, str], source: str) -> str:
    result = Stack(env=env, bucket=stack.bucket, home=stack.home).cli("submit", "generate", "--input", source)
    return result.stdout.split()[-1]


def _wait(
    db: Records, job_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        job = db.job(job_id)
        if job is not None and predicate(job):
            return
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f}s (job: {job})"
        time.sleep(0.25)


def _wait_logged(worker: WorkerProcess, line: str, seen: int, what: str) -> None:
    """Wait until the worker has logged `line` more than `seen` times: it has met the fault."""
    wait_for(lambda: worker.text().count(line) > seen, 120, f"{what}:\n{worker.text()[-3000:]}")


def _wait_final(db: Records, job_id: str, timeout: float) -> dict[str, Any]:
    _wait(db, job_id, lambda job: job["status"] not in ("queued", "running"), timeout, "the job did not end")
    job = db.job(job_id)
    assert job is not None
    return job


def _s3_keys(stack: Stack, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in stack.s3().get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix):
        keys.extend(entry["Key"] for entry in page.get("Contents", []))
    return keys


def _audit(stack: Stack, db: Records, job_id: str, scenario: str, started: float) -> Outcome:
    """Check an ended job: every item final, each completed one with its one object; print the line."""
    job = _wait_final(db, job_id, 5)
    items = db.items(job_id)
    keys = set(_s3_keys(stack, f"outputs/{job_id}/"))
    expected = {
        f"outputs/{output_key(job_id, i['key'], 'png')}": i for i in items if i["status"] == "succeeded"
    }
    not_final = [i for i in items if i["status"] not in FINAL_ITEM_STATES]
    missing = [key for key in expected if key not in keys]
    wrong_url = [i for key, i in expected.items() if i["output"] != f"s3://{stack.bucket}/{key}"]
    extra = keys - set(expected) - {f"outputs/{job_id}/results.jsonl"}
    counts = {state: sum(i["status"] == state for i in items) for state in FINAL_ITEM_STATES}
    outcome = Outcome(
        scenario=scenario,
        submitted=job["total"],
        completed=counts["succeeded"],
        failed=counts["failed"],
        cancelled=counts["cancelled"],
        lost=len(not_final) + len(missing) + len(wrong_url),
        duplicates=len(extra),
        rerun=sum(i["attempts"] > 1 for i in items),
        seconds=time.monotonic() - started,
    )
    print(outcome.line())
    assert len(items) == job["total"]
    assert (outcome.lost, outcome.duplicates) == (0, 0), (not_final, missing, wrong_url, sorted(extra))
    # The counters on the job row agree with the items.
    assert (job["n_succeeded"], job["n_failed"], job["n_cancelled"]) == tuple(counts.values())
    assert (job["n_queued"], job["n_running"]) == (0, 0)
    if f"outputs/{job_id}/results.jsonl" in keys or job["status"] != "cancelled":
        results = _results(stack, job_id)
        assert sorted(r["id"] for r in results) == sorted(i["key"] for i in items)
    return outcome


def _results(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    # The worker that ends the job writes its results file just after the job row says it ended (the
    # reconciler later, if storage refused): wait for the file, not for a moment.
    body = stack.written(f"outputs/{job_id}/results.jsonl")
    return [json.loads(line) for line in body.decode().splitlines()]


def _job_under_way(
    stack: Stack, db: Records, start: Callable[..., WorkerProcess], env: dict[str, str], name: str, count: int
) -> tuple[WorkerProcess, str]:
    """A worker started and a generate job of `count` items submitted; returns once items have completed."""
    worker = start("--gpus", "none", "--node", f"{name}0@%h", env=env)
    job_id = _submit(stack, env, _prompts(stack, name, count))
    _wait(db, job_id, lambda job: job["n_succeeded"] >= 4, 60, "no progress before the fault")
    return worker, job_id


def _worker_name(worker: WorkerProcess) -> str:
    # `ovis-batch worker --gpus none` runs its pool thread in its own process: that pid records the items.
    return f"{socket.gethostname()}:{worker.process.pid}"


def _kill(worker: WorkerProcess) -> None:
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(10)


# -- the scenarios -------------------------------------------------------------------------------------------
def test_sigkill_mid_chunk_several_times(
    stack: Stack, records: Records, start_worker: Callable[..., WorkerProcess]
) -> None:
    started = time.monotonic()
    # Chunks of 8 in micro-batches of 2: a chunk is mid-way for several batches, long enough to hit it there.
    env = _env(stack, OVIS_BATCH_CHUNK_SIZE="8")
    job_id = _submit(stack, env, _prompts(stack, "kill", 48))
    worker = start_worker("--gpus", "none", "--node", "k0@%h", env=env)
    mid_chunk = """
        SELECT count(*) AS n FROM items r JOIN items s ON s.job_id = r.job_id AND s.seq / 8 = r.seq / 8
        WHERE r.job_id = :j AND r.status = 'running' AND r.worker = :w
          AND s.status = 'succeeded' AND s.worker = :w
    """
    for kill in range(1, 4):
        name = _worker_name(worker)
        deadline = time.monotonic() + 40
        while not records.rows(mid_chunk, j=job_id, w=name)[0]["n"]:
            assert time.monotonic() < deadline, f"worker {kill} never got mid-chunk: {records.job(job_id)}"
            time.sleep(0.05)
        _kill(worker)
        worker = start_worker("--gpus", "none", "--node", f"k{kill}@%h", env=env)
    _wait_final(records, job_id, 90)
    outcome = _audit(stack, records, job_id, "SIGKILL mid-chunk x3", started)
    assert (outcome.completed, outcome.failed) == (48, 0)
    assert outcome.rerun > 0, "no item was run again: the kills did not hit a chunk mid-way"


def test_item_that_kills_its_worker_is_poisoned(
    stack: Stack, records: Records, start_worker: Callable[..., WorkerProcess]
) -> None:
    started = time.monotonic()
    env = _env(stack, OVIS_BATCH_FAKE_CRASH_MARKER=CRASH_MARKER)
    # Item 5 shares its micro-batch with item 4 and its chunk with items 4-7.
    job_id = _submit(stack, env, _prompts(stack, "poison", 12, crash_at=5))
    worker = start_worker("--gpus", "none", "--node", "p0@%h", env=env)
    crashes = 0
    deadline = time.monotonic() + 120
    while (records.job(job_id) or {"status": "running"})["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"the job did not end: {records.job(job_id)}"
        if worker.process.poll() is not None:
            assert worker.process.returncode == -signal.SIGKILL, worker.text()[-3000:]
            crashes += 1
            worker = start_worker("--gpus", "none", "--node", f"p{crashes}@%h", env=env)
        time.sleep(0.2)
    outcome = _audit(stack, records, job_id, "item kills its worker (poison)", started)
    items = records.items(job_id)
    poisoned = [(i["seq"], i["error_code"], i["attempts"]) for i in items if i["status"] == "failed"]
    assert poisoned == [(5, "poisoned", 3)]
    assert "gave up after 3 attempts" in items[5]["error_message"]
    assert crashes == 3
    assert (outcome.completed, outcome.failed) == (11, 1)
    assert records.job(job_id)["status"] == "partial"  # type: ignore[index]
    assert worker.process.poll() is None, "the worker after the quarantine is alive"


@pytest.mark.parametrize("reconciler", ["periodic", "cli"])
def test_redis_restarted_without_persistence(
    reconciler: str,
    throwaway_redis: tuple[str, ThrowawayRedis],
    pg_database: str,
    stack_on: Callable[..., Stack],
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    import redis

    broker_url, server = throwaway_redis
    stack = stack_on(database_url=pg_database, broker_url=broker_url)
    db = Records(pg_database)
    started = time.monotonic()
    # "cli": no reconciler in the worker; an operator runs `ovis-batch reconcile` after the restart.
    env = _env(stack, OVIS_BATCH_RECONCILE_INTERVAL_S="1" if reconciler == "periodic" else "0")
    worker, job_id = _job_under_way(stack, db, spawn_worker, env, "redis", 40)

    def waiting_messages() -> int:
        client = redis.Redis.from_url(broker_url)
        try:
            queues = [
                k for k in client.scan_iter(f"{env['OVIS_BATCH_QUEUE']}.*") if client.type(k) == b"list"
            ]
            return sum(int(client.llen(k)) for k in queues)
        finally:
            client.close()

    waiting = waiting_messages()
    assert waiting > 0, "the job should still have chunks waiting in Redis"
    connected = worker.text().count(BROKER_CONNECTED)
    server.kill()  # no persistence: every message Redis held is gone
    _wait_logged(worker, BROKER_LOST, 0, "the worker never saw Redis go away")
    server.start()
    job = db.job(job_id)
    assert job is not None and job["n_queued"] > 0, "queued work that only SQL knows about"
    if reconciler == "periodic":
        _wait_final(db, job_id, 180)
        lines = [line for line in worker.text().splitlines() if "re-dispatched" in line and job_id in line]
        said = lines[0].split(": ")[-1]
    else:
        # Back on the new Redis, the worker has nothing to take: only SQL knows about the lost work.
        _wait_logged(worker, BROKER_CONNECTED, connected, "the worker never connected to Redis again")
        assert db.job(job_id)["n_queued"] > 0, "nothing should have re-sent the lost work"  # type: ignore[index]
        said = " ".join(Stack(env=env, bucket=stack.bucket, home=stack.home).cli("reconcile").stdout.split())
        assert "items re-dispatched: 0" not in said, said
        _wait_final(db, job_id, 180)
    outcome = _audit(stack, db, job_id, f"Redis restart (no persistence), {reconciler} reconciler", started)
    print(f"  {waiting} chunk messages were lost with Redis; the reconciler: {said}")
    assert (outcome.completed, outcome.failed) == (40, 0)
    assert outcome.rerun == 0, "the chunk running through the outage should have finished its items"
    db.close()


def test_postgres_restarted_while_recording(
    throwaway_postgres: tuple[str, ThrowawayPostgres],
    redis_url: str,
    stack_on: Callable[..., Stack],
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    database_url, server = throwaway_postgres
    stack = stack_on(database_url=database_url, broker_url=redis_url)
    db = Records(database_url)
    started = time.monotonic()
    env = _env(stack)
    worker, job_id = _job_under_way(stack, db, spawn_worker, env, "pg", 40)
    server.kill()  # an immediate shutdown: PostgreSQL's crash, WAL recovery at the next start
    _wait_logged(worker, DB_FAULT, 0, "the worker never saw the database go away")
    server.start()
    _wait_final(db, job_id, 180)
    outcome = _audit(stack, db, job_id, "PostgreSQL restart", started)
    assert (outcome.completed, outcome.failed) == (40, 0)
    assert worker.process.poll() is None
    db.close()


@pytest.fixture
def s3_proxy(s3_endpoint: str, tmp_path: Path) -> Iterator[TcpProxy]:
    """A forwarder in front of the session's moto_server: killing it takes the endpoint down, state kept."""
    port = urlsplit(s3_endpoint).port
    assert port is not None
    proxy = TcpProxy(free_port(), port, tmp_path / "proxy.log")
    proxy.start()
    yield proxy
    proxy.kill()


def test_s3_endpoint_down_for_a_while(
    stack: Stack, records: Records, start_worker: Callable[..., WorkerProcess], s3_proxy: TcpProxy
) -> None:
    started = time.monotonic()
    env = _env(stack, OVIS_BATCH_S3_ENDPOINT_URL=s3_proxy.url)
    worker, job_id = _job_under_way(stack, records, start_worker, env, "s3", 40)
    s3_proxy.kill()
    # Down until the worker has hit it; an item recorded while S3 was down would have no object (audit).
    _wait_logged(worker, STORAGE_FAULT, 0, "the chunk never hit the outage")
    s3_proxy.start()
    _wait_final(records, job_id, 180)
    outcome = _audit(stack, records, job_id, "S3 endpoint down until the worker hit it", started)
    assert (outcome.completed, outcome.failed) == (40, 0)
    assert outcome.rerun == 0, "a retry after a transient fault must not count as an attempt of the items"
    assert worker.process.poll() is None


def test_worker_killed_while_its_chunks_wait_for_a_retry(
    stack: Stack, records: Records, start_worker: Callable[..., WorkerProcess], s3_proxy: TcpProxy
) -> None:
    # A retried chunk waits for its countdown in the worker that took it, unacknowledged: when that worker
    # dies, Redis gives the message back only after the visibility timeout (hours). SQL knows better.
    started = time.monotonic()
    env = _env(stack, OVIS_BATCH_S3_ENDPOINT_URL=s3_proxy.url)
    s3_proxy.kill()
    worker = start_worker("--gpus", "none", "--node", "e0@%h", env=env)
    # The producer reaches S3 (submit checks the output location); only the worker's endpoint is down.
    job_id = _submit(stack, stack.env, _prompts(stack, "eta", 8))
    wait_for(lambda: worker.text().count("hit storage_unavailable") >= 2, 60, "the chunks were not retried")
    _wait(records, job_id, lambda job: job["n_queued"] == 8, 30, "the chunks did not hand their items back")
    _kill(worker)
    s3_proxy.start()
    start_worker("--gpus", "none", "--node", "e1@%h", env=env)
    _wait_final(records, job_id, 60)
    outcome = _audit(stack, records, job_id, "worker killed holding retries", started)
    assert (outcome.completed, outcome.failed) == (8, 0)


def test_sigterm_mid_chunk_hands_work_back(
    stack: Stack, records: Records, start_worker: Callable[..., WorkerProcess]
) -> None:
    # As in test_deployment.py's graceful-stop test, with the output audit of this module.
    started = time.monotonic()
    env = _env(stack, OVIS_BATCH_CHUNK_SIZE="8")
    first, job_id = _job_under_way(stack, records, start_worker, env, "term", 32)
    second = start_worker("--gpus", "none", "--node", "t1@%h", env=env)
    assert first.stop(signal.SIGTERM, timeout=STOP_TIMEOUT_S) == 0, first.text()[-3000:]
    _wait_final(records, job_id, 180)
    outcome = _audit(stack, records, job_id, "SIGTERM mid-chunk", started)
    assert (outcome.completed, outcome.failed) == (32, 0)
    assert second.process.poll() is None


def test_cancel_stops_at_the_next_micro_batch(
    stack: Stack, records: Records, start_worker: Callable[..., WorkerProcess]
) -> None:
    started = time.monotonic()
    # One chunk of 64 on the worker, in micro-batches of 2, and one of 8 waiting behind it. A long lease:
    # the worker is frozen while the cancel lands, and must find its items still its own afterwards.
    env = _env(
        stack,
        OVIS_BATCH_CHUNK_SIZE="64",
        OVIS_BATCH_FAKE_MS_PER_ITEM="150",
        OVIS_BATCH_LEASE_SECONDS="600",
    )
    worker, job_id = _job_under_way(stack, records, start_worker, env, "cancel", 72)
    # The cancel lands while the worker is frozen (SIGSTOP): what it holds and what is queued then are known
    # exactly, however fast or slow the machine runs either process.
    os.killpg(worker.process.pid, signal.SIGSTOP)
    try:
        at_cancel = {item["seq"]: item["status"] for item in records.items(job_id)}
        stack.cli("cancel", job_id)
    finally:
        os.killpg(worker.process.pid, signal.SIGCONT)
    _wait(records, job_id, lambda job: job["status"] == "cancelled", 120, "the cancel did not end the job")
    outcome = _audit(stack, records, job_id, "cancel mid-job", started)
    assert outcome.cancelled > 0 and outcome.completed + outcome.cancelled == 72
    items = {item["seq"]: item for item in records.items(job_id)}
    assert {item["status"] for item in items.values()} == {"succeeded", "cancelled"}
    queued = [seq for seq, status in at_cancel.items() if status == "queued"]
    held = [seq for seq, status in at_cancel.items() if status == "running"]
    assert queued and all(items[seq]["status"] == "cancelled" for seq in queued), "queued items ran"
    # Of what the worker held, only the micro-batch then on the model (and results not yet recorded) may
    # still finish: it stops at its next micro-batch instead of running its chunk to the end.
    ran = [seq for seq in held if items[seq]["status"] == "succeeded"]
    assert len(ran) < len(held), f"the worker ran all {len(held)} items it held after the cancel"
    report = json.loads(stack.cli("status", job_id, "--json").stdout)
    counters = ("status", "succeeded", "cancelled", "queued", "running")
    assert tuple(report[name] for name in counters) == (
        "cancelled",
        outcome.completed,
        outcome.cancelled,
        0,
        0,
    )
    print(f"  of the {len(held)} items the worker held when the cancel landed, {len(ran)} finished")
    assert worker.process.poll() is None


#: Items of a job leased to a worker with a lease ending before :t.
_HELD_BEFORE = """
    SELECT count(*) AS n FROM items
    WHERE job_id = :j AND status = 'running' AND worker = :w AND lease_until < :t
"""


def _held_before(db: Records, job_id: str, worker: str, lease_ends: datetime) -> int | None:
    """Items leased to `worker` whose lease ends before `lease_ends`; None while the database is down."""
    try:
        return int(db.rows(_HELD_BEFORE, j=job_id, w=worker, t=lease_ends)[0]["n"])
    except SQLAlchemyError:
        return None


def _restart_mid_chunk(
    db: Records, server: ThrowawayPostgres, job_id: str, worker: WorkerProcess, lease: int, which: str
) -> None:
    """Restart the database while `worker` holds items, then wait until it has handed back (or finished)
    every item it held, and made progress again."""
    name = _worker_name(worker)
    wait_for(
        lambda: bool(_held_before(db, job_id, name, datetime.now(UTC) + timedelta(seconds=lease))),
        120,
        f"the worker held no items before {which}: {db.job(job_id)}",
    )
    # Items leased before this instant have leases that end before `lease_ends`.
    lease_ends = datetime.now(UTC) + timedelta(seconds=lease)
    done = db.job(job_id)["n_succeeded"]  # type: ignore[index]
    faults = worker.text().count(DB_FAULT)
    server.kill()
    # Down until the worker has met the outage (a chunk of its own hit it), however long that takes.
    _wait_logged(worker, DB_FAULT, faults, f"the worker never saw {which}")
    server.start()
    # Well before any lease could run out, what the worker held is back in the queue, or done.
    wait_for(
        lambda: _held_before(db, job_id, name, lease_ends) == 0,
        120,
        f"items stayed leased to the live worker after {which}",
    )
    wait_for(
        lambda: (db.job(job_id) or {"n_succeeded": done})["n_succeeded"] > done,
        120,
        f"no progress after {which}",
    )


def test_postgres_restarted_more_often_than_max_attempts_uses_up_no_attempt(
    throwaway_postgres: tuple[str, ThrowawayPostgres],
    redis_url: str,
    stack_on: Callable[..., Stack],
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    # A lease far longer than the test: nothing but the worker's own hand-back can free what it held.
    database_url, server = throwaway_postgres
    stack = stack_on(database_url=database_url, broker_url=redis_url)
    db = Records(database_url)
    started = time.monotonic()
    lease, max_attempts = 600, 3
    env = _env(
        stack,
        OVIS_BATCH_LEASE_SECONDS=str(lease),
        OVIS_BATCH_MAX_ATTEMPTS=str(max_attempts),
        OVIS_BATCH_CHUNK_SIZE="8",
        OVIS_BATCH_FAKE_MS_PER_ITEM="150",
    )
    worker, job_id = _job_under_way(stack, db, spawn_worker, env, "pgx", 96)
    for restart in range(1, max_attempts + 2):
        _restart_mid_chunk(db, server, job_id, worker, lease, f"restart {restart}")
    _wait_final(db, job_id, 180)
    outcome = _audit(stack, db, job_id, f"PostgreSQL restarted {max_attempts + 1} times", started)
    assert (outcome.completed, outcome.failed) == (96, 0)
    attempts = [item["attempts"] for item in db.items(job_id)]
    assert max(attempts) < max_attempts, f"outages charged attempts: {sorted(attempts)[-5:]}"
    waited = "kept while the database was unavailable" in worker.text()
    assert waited, "no hand-back ever waited for the database: the restarts missed the chunks"
    assert worker.process.poll() is None
    db.close()


def test_results_file_written_once_storage_is_back(
    stack: Stack, records: Records, start_worker: Callable[..., WorkerProcess], s3_proxy: TcpProxy
) -> None:
    # Captions of local photos: the items need no storage, only the job's results file does, and S3 is
    # unreachable for the worker from the start.
    env = _env(stack, OVIS_BATCH_S3_ENDPOINT_URL=s3_proxy.url)
    photos = write_photos(stack.home / "photos", count=6)
    s3_proxy.kill()
    start_worker("--gpus", "none", "--node", "x0@%h", env=env)
    job_id = stack.cli("submit", "caption", "--input", str(photos[0].parent)).stdout.split()[-1]
    _wait(records, job_id, lambda job: job["export_error"] is not None, 120, "no failed export was recorded")
    job = records.job(job_id)
    assert job is not None and (job["status"], job["export_url"]) == ("succeeded", None)
    shown = stack.cli("status", job_id).stdout
    assert "export pending" in " ".join(shown.split()), shown
    report = json.loads(stack.cli("status", job_id, "--json").stdout)
    assert report["export_pending"] and "StorageUnavailable" in report["export_error"]

    s3_proxy.start()
    _wait(
        records, job_id, lambda job: job["export_url"] is not None, 120, "the results file was never written"
    )
    results = _results(stack, job_id)
    assert sorted(row["id"] for row in results) == sorted(photo.name for photo in photos)
    assert records.job(job_id)["export_url"] == f"s3://{stack.bucket}/outputs/{job_id}/results.jsonl"  # type: ignore[index]
    assert not json.loads(stack.cli("status", job_id, "--json").stdout)["export_pending"]
