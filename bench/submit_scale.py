"""Submission, status and export at dataset scale, against PostgreSQL and Redis.

Writes a JSONL manifest of N items (ids and image keys; the images need not exist: submission does not read
them), submits it as a caption job through the Python API on a fresh PostgreSQL database with chunks
published to Redis, reads the job's status the way `ovis-batch status --json` does, and exports every item
to JSONL. Peak RSS is the process's high-water mark when submission ends (the manifest is written streaming).

    python bench/submit_scale.py --items 1000000

Prints one JSON object as its last line: items, submit_s, peak_rss_mb, status_ms, export_s (and details).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.raw_result import write_result
from jobs.api import Client
from jobs.db import dispose_engines, upgrade
from jobs.lifecycle import JobKind
from jobs.settings import Settings


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_manifest(path: Path, count: int) -> None:
    """N records of id and image key, as a dataset tool would write them (1000 images per folder)."""
    with path.open("w", encoding="utf-8") as out:
        for start in range(0, count, 10_000):
            out.write(
                "".join(
                    f'{{"id": "img{i:08d}", "image": "images/{i // 1000:05d}/{i:08d}.jpg"}}\n'
                    for i in range(start, min(count, start + 10_000))
                )
            )


def main() -> None:
    """Run the benchmark and print its JSON line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="a database on the server; the benchmark creates and drops its own beside it",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    parser.add_argument(
        "--chunk-size", type=int, default=0, help="items per chunk message (default: the product's default)"
    )
    parser.add_argument("--no-save", action="store_true", help="print only; write no file to bench/results/")
    args = parser.parse_args()

    name = f"ovis_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    base = args.postgres.rsplit("/", 1)[0]
    database_url = f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    queue = f"bench{uuid.uuid4().hex[:8]}"
    broker = redis.Redis.from_url(args.redis)
    result: dict[str, object] = {}
    try:
        upgrade(database_url)
        with tempfile.TemporaryDirectory(prefix="ovis-bench-") as tmp:
            folder = Path(tmp)
            manifest = folder / "manifest.jsonl"
            write_manifest(manifest, args.items)
            settings = Settings(
                home=folder / "home",
                database_url=database_url,
                broker_url=args.redis,
                queue=queue,
                input_roots=[str(folder)],
                storage_url=str(folder / "outputs"),
                **({"chunk_size": args.chunk_size} if args.chunk_size else {}),
            )
            client = Client(settings)

            started = time.perf_counter()
            job_id = client.submit(JobKind.CAPTION, str(manifest))
            submit_s = time.perf_counter() - started
            peak_rss_mb = _rss_mb()

            timings = []
            for _ in range(5):
                started = time.perf_counter()
                report = client.status(job_id)
                client.errors_by_code(job_id)
                timings.append((time.perf_counter() - started) * 1000)
            assert report.total == args.items == report.queued, report

            out = folder / "export.jsonl"
            started = time.perf_counter()
            rows = client.export(job_id, str(out), "jsonl")
            export_s = time.perf_counter() - started
            assert rows == args.items, rows
            export_mb = out.stat().st_size / 1e6

            messages = sum(int(broker.llen(key)) for key in broker.scan_iter(f"{queue}.caption*"))
            result = {
                "items": args.items,
                "submit_s": round(submit_s, 2),
                "peak_rss_mb": round(peak_rss_mb, 1),
                "status_ms": round(statistics.median(timings), 2),
                "status_first_ms": round(timings[0], 2),
                "export_s": round(export_s, 2),
                "export_mb": round(export_mb, 1),
                "export_peak_rss_mb": round(_rss_mb(), 1),
                "chunk_size": settings.chunk_size,
                "chunks_published": messages,
                "items_per_s_submit": round(args.items / submit_s),
                "cpus": os.cpu_count(),
            }
    finally:
        for key in broker.scan_iter(f"{queue}*"):
            broker.delete(key)
        dispose_engines()
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    if not args.no_save:
        print(f"wrote {write_result('submit_scale', result)}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
