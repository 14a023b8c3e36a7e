"""Submission at scale on PostgreSQL and Redis: COPY in batches, chunks published while the source streams,
status from the job row, a full export, and --skip-existing on the COPY path."""

from __future__ import annotations

import json
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
from jobs.submit import FIRST_BATCH, INSERT_BATCH, WRITERS, ItemSpec, batch_sizes

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
    queue = f"scale{tmp_path.name[-8:]}"
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


def test_chunks_go_out_while_the_source_is_still_read_and_skipped_items_are_copied_as_done(
    tmp_path: Path, pg_database: str
) -> None:
    upgrade(pg_database)
    settings = _settings(tmp_path, pg_database, "memory://", "q")
    watching = _Watching()
    client = Client(settings, watching)
    first = client.submit_items(JobKind.GENERATE, watching.items(COUNT))
    # A batch's chunks go out once it commits, while later batches are still being read: when the last item
    # is read, at most WRITERS batches before its own are still being written.
    sizes, total = [], 0
    for size in batch_sizes(FIRST_BATCH // 64 * 64, INSERT_BATCH // 64 * 64):
        if total >= COUNT:
            break
        sizes.append(size)
        total += size
    assert watching.sent_while_reading >= sum(sizes[: -1 - WRITERS]) // 64 > 0
    assert sorted(watching.chunks)[-1][1] == COUNT

    # Pretend the first job finished half of its items; a new job with --skip-existing keeps those.
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE items SET status = 'succeeded', output = 'out-' || key "
                "WHERE job_id = :j AND seq % 2 = 0"
            ),
            {"j": first},
        )
        conn.execute(text("UPDATE jobs SET n_succeeded = :n WHERE id = :j"), {"n": COUNT // 2, "j": first})
    engine.dispose()
    again = _Watching()
    second = Client(settings, again).submit_items(JobKind.GENERATE, again.items(COUNT), skip_existing=True)
    report = client.status(second)
    assert (report.total, report.skipped, report.succeeded, report.queued) == (
        COUNT,
        COUNT // 2,
        COUNT // 2,
        COUNT // 2,
    )
    assert sum(stop - start for start, stop in again.chunks) <= COUNT  # ranges may span the skipped items
    rows = {row["id"]: row for row in client_rows(client, second, tmp_path)}
    assert rows["p0"]["output"] == "out-p0" and rows["p0"]["status"] == "succeeded"
    assert rows["p1"]["status"] == "queued"


def client_rows(client: Client, job_id: str, tmp_path: Path) -> list[dict[str, object]]:
    client.export(job_id, str(tmp_path / "rows.jsonl"))
    return [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
