"""Items a worker claimed ahead and did not run go back to the queue on PostgreSQL and are published again
to Redis as a chunk of their own, through the Celery app a worker process uses."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from jobs.api import Client
from jobs.db import session_scope, upgrade
from jobs.dispatch import CeleryDispatcher
from jobs.lifecycle import JobKind
from jobs.models import Item
from tests.helpers import embedded_settings, write_photos
from workers.chunk import run_chunk
from workers.runtime import WorkerRuntime

pytestmark = pytest.mark.integration

CHUNK = 8
BATCH = 4


def _messages(broker: redis.Redis, queue: str) -> list[list[object]]:
    """The arguments of the chunk messages waiting in the queue, oldest first."""
    found = []
    for key in broker.scan_iter(f"{queue}.caption*"):
        for raw in reversed(broker.lrange(key, 0, -1)):  # type: ignore[union-attr]
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            found.append(body[0])
    return found


def test_items_claimed_ahead_are_handed_back_and_published_again(
    tmp_path: Path, pg_database: str, redis_url: str
) -> None:
    upgrade(pg_database)
    queue = f"handback{uuid.uuid4().hex[:12]}"  # its own, on a Redis another run may share
    settings = embedded_settings(
        tmp_path,
        database_url=pg_database,
        broker_url=redis_url,
        queue=queue,
        chunk_size=CHUNK,
        caption_batch=BATCH,
        io_threads=2,
    )
    write_photos(tmp_path / "in", count=2 * CHUNK)
    dispatcher = CeleryDispatcher(settings)
    job_id = Client(settings, dispatcher).submit(JobKind.CAPTION, str(tmp_path / "in"))
    broker = redis.Redis.from_url(redis_url)
    try:
        assert _messages(broker, queue) == [[job_id, 0, CHUNK], [job_id, CHUNK, 2 * CHUNK]]
        for key in broker.scan_iter(f"{queue}*"):
            broker.delete(key)
        runtime = WorkerRuntime(settings)
        runtime.dispatcher = dispatcher
        runtime.read_ahead.hold_s = 0.05
        outcome = run_chunk(runtime, JobKind.CAPTION, job_id, 0, CHUNK)
        assert (outcome.claimed, outcome.succeeded) == (CHUNK, CHUNK)
        deadline = time.monotonic() + 30
        while not _messages(broker, queue) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _messages(broker, queue) == [[job_id, CHUNK, CHUNK + BATCH]]
        with session_scope(pg_database) as session:
            query = select(Item.status, Item.attempts).where(Item.job_id == job_id).order_by(Item.seq)
            rows = [tuple(row) for row in session.execute(query)]
        assert rows[CHUNK:] == [("queued", 0)] * CHUNK
        # The worker that runs the new message takes what was prepared.
        again = run_chunk(runtime, JobKind.CAPTION, job_id, CHUNK, CHUNK + BATCH)
        assert (again.claimed, again.succeeded, again.read_ahead) == (2 * BATCH, 2 * BATCH, 2 * BATCH)
    finally:
        for key in broker.scan_iter(f"{queue}*"):
            broker.delete(key)
