"""Submission at scale on PostgreSQL and Redis: COPY in batches while the source streams, chunks published
once it is all in, status from the job row, and a full export."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis

from jobs.api import Client
from jobs.db import upgrade
from jobs.dispatch import CeleryDispatcher
from jobs.errors import InvalidSource
from jobs.lifecycle import JobKind
from jobs.settings import Settings
from jobs.submit import INSERT_BATCH, ItemSpec

pytestmark = pytest.mark.integration

COUNT = 30_000


def _settings(tmp_path: Path, database: str, broker: str, queue: str) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=database,
        broker_url=broker,
        queue=queue,
        input_roots=[str(tmp_path)],
        storage_url=str(tmp_path / "outputs"),
        chunk_size=64,
    )


def test_a_large_manifest_streams_into_postgresql_and_redis(
    tmp_path: Path, pg_database: str, redis_url: str
) -> None:
    upgrade(pg_database)
    queue = f"scale{uuid.uuid4().hex[:12]}"  # its own, on a Redis another run may share
    settings = _settings(tmp_path, pg_database, redis_url, queue)
    manifest = tmp_path / "m.jsonl"
    with manifest.open("w") as out:
        for index in range(COUNT):
            out.write(
                json.dumps({"id": f"img{index:06d}", "image": f"img/{index}.jpg", "seed": index}) + "\n"
            )
    client = Client(settings, CeleryDispatcher(settings))
    job_id = client.submit(JobKind.CAPTION, str(manifest))
    report = client.status(job_id)
    assert (report.total, report.queued, report.status) == (COUNT, COUNT, "queued")
    broker = redis.Redis.from_url(redis_url)
    try:
        keys = list(broker.scan_iter(f"{queue}.caption*"))
        assert sum(int(broker.llen(key)) for key in keys) == -(-COUNT // 64)
        message = json.loads(broker.lindex(keys[0], 0))  # type: ignore[arg-type]
        assert message["headers"]["task"] == "ovis.caption"
    finally:
        for key in broker.scan_iter(f"{queue}*"):
            broker.delete(key)

    duplicate = tmp_path / "dup.jsonl"
    duplicate.write_text(
        "".join(json.dumps({"id": f"d{i % 5000}", "image": "x.jpg"}) + "\n" for i in range(12_000))
    )
    with pytest.raises(InvalidSource, match="share one id"):
        client.submit(JobKind.CAPTION, str(duplicate))
    assert [report.id for report in client.list()] == [job_id]

    out = tmp_path / "all.parquet"
    assert client.export(job_id, str(out), "parquet") == COUNT
    table = pq.read_table(out, columns=["id", "status"])
    assert table.column("id")[COUNT - 1].as_py() == f"img{COUNT - 1:06d}"
    assert set(table.column("status").to_pylist()) == {"queued"}


class _Watching:
    """A dispatcher recording chunks, and a source that notes how many chunks were out while it was read."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, int]] = []
        self.sent_while_reading = 0

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        self.chunks.append((start, stop))

    def items(self, count: int) -> Iterator[ItemSpec]:
        for index in range(count):
            if index == count - 1:
                self.sent_while_reading = len(self.chunks)
            yield ItemSpec(key=f"p{index}", text=f"prompt {index}")


def test_chunks_go_out_once_the_whole_source_is_in_and_cover_every_item(
    tmp_path: Path, pg_database: str
) -> None:
    upgrade(pg_database)
    settings = _settings(tmp_path, pg_database, "memory://", "q")
    watching = _Watching()
    client = Client(settings, watching)
    job_id = client.submit_items(JobKind.GENERATE, watching.items(COUNT))
    # Several batches were written on the COPY path (INSERT_BATCH items each) before any chunk went out.
    assert COUNT > 2 * INSERT_BATCH and watching.sent_while_reading == 0
    ranges = sorted(watching.chunks)
    assert [seq for start, stop in ranges for seq in range(start, stop)] == list(range(COUNT))
    assert all(stop - start <= 64 for start, stop in ranges)
    rows = client_rows(client, job_id, tmp_path)
    assert [row["id"] for row in rows] == [f"p{index}" for index in range(COUNT)]


def client_rows(client: Client, job_id: str, tmp_path: Path) -> list[dict[str, object]]:
    client.export(job_id, str(tmp_path / "rows.jsonl"))
    return [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
