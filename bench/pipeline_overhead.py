"""What the pipeline costs around the model: one real `ovis-batch worker` against a naive one-task-per-image
Celery script, on the same images, storage, Redis and PostgreSQL.

Makes N small real images (crops of scikit-image's sample photos) in a local folder or in S3 (moto_server,
started here unless --s3-endpoint is given), then measures in the same run:

- storage_get_per_s: the storage's raw parallel read rate (a pool of threads reading the images);
- items_per_s: a caption job of the N images through `ovis-batch worker` on the torch-free backend
  (`--model-ms-per-item` / `--model-ms-per-batch` of simulated model time, micro-batches of `--batch`), from
  submission until the job is final;
- baseline_items_per_s: the naive way, one Celery task per image (read, decode, the same backend on one
  image, one INSERT of its caption), sent one by one, until every caption is in PostgreSQL;
- efficiency: simulated model time / (wall time x worker processes): 1.0 means the model never waited.

    python bench/pipeline_overhead.py --items 10000 --storage local
    python bench/pipeline_overhead.py --items 10000 --storage s3 --model-ms-per-item 10 --batch 16

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from celery import Celery  # noqa: E402

from bench.gpu_system import stop_worker  # noqa: E402

NAIVE_TABLE = "naive_captions"
#: Both pipelines are timed from submission to the time their last result was written (read from the
#: database), so the poll that notices the end can be slow: on a 2-core machine a fast poll takes CPU from
#: what it measures.
POLL_S = 0.1


# -- the naive baseline: what a quick script does ----------------------------------------------------------
def naive_app() -> Celery:
    """A Celery app with default settings and one task per image (configured from the environment)."""
    app = Celery("naive", broker=os.environ["NAIVE_BROKER"])
    app.conf.update(
        task_default_queue=os.environ["NAIVE_QUEUE"],
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        worker_hijack_root_logger=False,
    )
    state: dict[str, Any] = {}

    @app.task(name="naive.caption")
    def caption(url: str, run: str) -> None:
        # Per process: a database connection, a storage client and the model, as a script would keep them.
        if not state:
            import psycopg

            from gpu_model import BackendOptions
            from gpu_model.fake import FakeBackend
            from storage import S3Options

            state["db"] = psycopg.connect(os.environ["NAIVE_DSN"], autocommit=True)
            state["backend"] = backend = FakeBackend(
                BackendOptions(simulated_ms_per_item=float(os.environ.get("NAIVE_MS_PER_ITEM", "0")))
            )
            state["defaults"] = backend.load().defaults["caption"]
            endpoint = os.environ.get("NAIVE_S3_ENDPOINT")
            state["s3"] = (
                S3Options(endpoint_url=endpoint, region="us-east-1", addressing_style="path")
                if endpoint
                else None
            )
        from PIL import Image

        from gpu_model import CaptionRequest
        from storage import read_url

        image = Image.open(io.BytesIO(read_url(url, state["s3"]))).convert("RGB")
        defaults = state["defaults"]
        request = CaptionRequest(
            image=image,
            prompt=defaults["prompt"],
            max_new_tokens=defaults["max_new_tokens"],
            temperature=0.0,
            seed=0,
        )
        [text] = state["backend"].caption([request])
        state["db"].execute(
            f"INSERT INTO {NAIVE_TABLE} (run, url, caption) VALUES (%s, %s, %s)", (run, url, text)
        )

    return app


if os.environ.get("NAIVE_BROKER"):
    app = naive_app()  # what `celery -A pipeline_overhead` loads in the baseline's worker


# -- the benchmark ---------------------------------------------------------------------------------------
def make_images(count: int, size: int) -> list[bytes]:
    """`count` distinct small JPEGs: crops of the sample photos at shifting offsets."""
    from importlib import resources

    from PIL import Image

    photos = []
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"):
        with resources.as_file(resources.files("skimage") / "data" / name) as path, Image.open(path) as image:
            photos.append(image.convert("RGB"))
    images = []
    for index in range(count):
        photo = photos[index % len(photos)]
        x = (index * 7) % (photo.width - size)
        y = (index * 13) % (photo.height - size)
        buffer = io.BytesIO()
        photo.crop((x, y, x + size, y + size)).save(buffer, "JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


def start_moto(folder: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """A moto_server on a free port."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(folder / "moto.log", "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError as exc:
            if getattr(exc, "code", None):
                break
            time.sleep(0.05)
    return endpoint, process


def read_rate(urls: list[str], s3: Any, threads: int) -> float:
    """Objects per second read by `threads` threads at once."""
    from storage import read_url

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda url: read_url(url, s3), urls):
            pass
    return len(urls) / (time.perf_counter() - started)


_CHUNK_LINE = re.compile(
    r"claimed in (?P<wall>[0-9.]+)s \((?P<ahead>\d+) read ahead\); model (?P<model>[0-9.]+)s, waiting for "
    r"inputs (?P<inputs>[0-9.]+)s, for bookkeeping (?P<books>[0-9.]+)s"
)


def chunk_times(log: str) -> dict[str, float]:
    """The worker's own per-chunk time split (its INFO line per chunk), summed over the run: where the
    processes' time went, and how many items the read-ahead prepared."""
    names = ("chunks", "wall_s", "model_s", "input_wait_s", "bookkeeping_wait_s", "read_ahead")
    sums = dict.fromkeys(names, 0.0)
    for match in _CHUNK_LINE.finditer(log):
        sums["chunks"] += 1
        for name, group in (("wall_s", "wall"), ("model_s", "model"), ("input_wait_s", "inputs")):
            sums[name] += float(match[group])
        sums["bookkeeping_wait_s"] += float(match["books"])
        sums["read_ahead"] += int(match["ahead"])
    return {name: round(value, 2) for name, value in sums.items()}


def start_worker(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a worker in a session of its own (stopped with its pool children) and wait until it consumes."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_ready(process, log)
    except BaseException:
        stop_worker(process)
        raise
    return process


def wait_ready(process: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    """Until Celery logs that the worker consumes."""
    deadline = time.monotonic() + timeout
    while " ready." not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """User + system CPU of a process and its children so far: a cost that other load does not change."""
    import psutil

    total = 0.0
    root = psutil.Process(process.pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def main() -> None:
    """Run both pipelines on the same images and print the JSON line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    parser.add_argument("--model-ms-per-item", type=float, default=0.0)
    parser.add_argument("--model-ms-per-batch", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=0, help="micro-batch size (default: the backend's, 64)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes, for both pipelines")
    parser.add_argument(
        "--chunk-size", type=int, default=256, help="items per chunk message (OVIS_BATCH_CHUNK_SIZE)"
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--read-threads", type=int, default=16)
    parser.add_argument(
        "--io-threads", type=int, default=0, help="OVIS_BATCH_IO_THREADS (default: settings')"
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--async-commit",
        action="store_true",
        help="experiment: the worker's connections commit without waiting for the WAL flush",
    )
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/8")
    parser.add_argument("--s3-endpoint", default="")
    args = parser.parse_args()

    import psycopg
    import redis

    from jobs.api import Client
    from jobs.db import dispose_engines, session_scope, upgrade
    from jobs.dispatch import CeleryDispatcher
    from jobs.lifecycle import JobKind, JobStatus
    from jobs.models import Job
    from jobs.settings import Settings
    from storage import S3Options, open_store

    tag = uuid.uuid4().hex[:8]
    database = f"ovis_bench_{tag}"
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    dsn = f"{args.postgres.rsplit('/', 1)[0]}/{database}"
    database_url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    broker = redis.Redis.from_url(args.redis)
    queue = f"bench{tag}"
    moto: subprocess.Popen[bytes] | None = None
    processes: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ovis-pipeline-") as tmp:
        folder = Path(tmp)
        try:
            upgrade(database_url)
            s3: S3Options | None = None
            env = {k: v for k, v in os.environ.items() if not k.startswith("OVIS_BATCH_")}
            env |= {"PYTHONUNBUFFERED": "1"}
            if args.storage == "s3":
                # moto accepts any key; a real endpoint takes the environment's own credentials.
                os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
                os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
                env |= {name: os.environ[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
                endpoint = args.s3_endpoint
                if not endpoint:
                    endpoint, moto = start_moto(folder)
                s3 = S3Options(endpoint_url=endpoint, region="us-east-1", addressing_style="path")
                import boto3

                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=tag)
                inputs, outputs = f"s3://{tag}/inputs", f"s3://{tag}/outputs"
                env |= {
                    "OVIS_BATCH_S3_ENDPOINT_URL": endpoint,
                    "OVIS_BATCH_S3_REGION": "us-east-1",
                    "OVIS_BATCH_S3_ADDRESSING_STYLE": "path",
                    "NAIVE_S3_ENDPOINT": endpoint,
                }
            else:
                inputs, outputs = str(folder / "inputs"), str(folder / "outputs")
            store = open_store(inputs, s3)
            images = make_images(args.items, args.image_size)
            keys = [f"{index // 1000:03d}/img{index:06d}.jpg" for index in range(args.items)]
            with ThreadPoolExecutor(16) as pool:
                urls = list(
                    pool.map(
                        lambda pair: store.write(pair[0], pair[1], "image/jpeg"),
                        zip(keys, images, strict=True),
                    )
                )
            del images
            storage_get_per_s = read_rate(urls[: min(len(urls), 5000)], s3, args.read_threads)

            settings = Settings(
                home=folder / "home",
                database_url=database_url,
                broker_url=args.redis,
                queue=queue,
                storage_url=outputs,
                input_roots=[inputs],
                backend="fake",
                fake_ms_per_item=args.model_ms_per_item,
                fake_ms_per_batch=args.model_ms_per_batch,
                caption_batch=args.batch,
                s3_endpoint_url=s3.endpoint_url if s3 else None,
                s3_region="us-east-1" if s3 else None,
                s3_addressing_style="path",
                reconcile_interval_s=0,
                chunk_size=args.chunk_size,
            )
            env |= {
                "OVIS_BATCH_HOME": str(folder / "home"),
                "OVIS_BATCH_DATABASE_URL": database_url
                + ("?options=-csynchronous_commit%3Doff" if args.async_commit else ""),
                "OVIS_BATCH_BROKER_URL": args.redis,
                "OVIS_BATCH_QUEUE": queue,
                "OVIS_BATCH_STORAGE_URL": outputs,
                "OVIS_BATCH_INPUT_ROOTS": inputs,
                "OVIS_BATCH_BACKEND": "fake",
                "OVIS_BATCH_FAKE_MS_PER_ITEM": str(args.model_ms_per_item),
                "OVIS_BATCH_FAKE_MS_PER_BATCH": str(args.model_ms_per_batch),
                "OVIS_BATCH_CAPTION_BATCH": str(args.batch),
                "OVIS_BATCH_RECONCILE_INTERVAL_S": "0",
                "OVIS_BATCH_CHUNK_SIZE": str(args.chunk_size),
            }
            if args.io_threads:
                env["OVIS_BATCH_IO_THREADS"] = str(args.io_threads)

            # -- ours ---------------------------------------------------------------------------------
            log = folder / "worker.log"
            argv = ["worker", "--gpus", "none", "--concurrency", str(args.concurrency)]
            worker = start_worker([str(BIN / "ovis-batch"), *argv], env, log)
            processes.append(worker)
            client = Client(settings, CeleryDispatcher(settings))
            cpu_before = cpu_seconds(worker)
            started, started_epoch = time.perf_counter(), time.time()
            job_id = client.submit(JobKind.CAPTION, inputs)
            submit_s = time.perf_counter() - started
            while True:
                with session_scope(database_url) as session:
                    job = session.get(Job, job_id)
                    assert job is not None
                    status, succeeded, failed = job.status, job.n_succeeded, job.n_failed
                    finished_at = job.finished_at
                if JobStatus(status).final:
                    break
                time.sleep(POLL_S)
            assert finished_at is not None
            wall_s = finished_at.timestamp() - started_epoch
            worker_cpu = cpu_seconds(worker) - cpu_before
            stop_worker(worker)
            chunks = chunk_times(log.read_text(errors="replace"))
            if succeeded != args.items:
                tail = log.read_text()[-3000:]
                raise SystemExit(f"job ended {status} with {succeeded} succeeded, {failed} failed:\n{tail}")
            batch = args.batch or 64
            batches = -(-args.items // batch)
            model_s = (args.model_ms_per_item * args.items + args.model_ms_per_batch * batches) / 1000

            # -- the naive baseline -------------------------------------------------------------------------
            baseline: float | None = None
            baseline_cpu: float | None = None
            if not args.skip_baseline:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(
                        f"CREATE TABLE {NAIVE_TABLE} (run text, url text, caption text, "
                        "done_at timestamptz DEFAULT clock_timestamp())"
                    )
                naive_env = env | {
                    "NAIVE_BROKER": args.redis,
                    "NAIVE_QUEUE": f"naive{tag}",
                    "NAIVE_DSN": dsn,
                    "NAIVE_MS_PER_ITEM": str(args.model_ms_per_item),
                    "PYTHONPATH": f"{ROOT / 'bench'}:{ROOT}",
                }
                naive_log = folder / "naive.log"
                argv = ["-A", "pipeline_overhead", "worker", "--loglevel=INFO", "--pool=prefork"]
                argv += [f"--concurrency={args.concurrency}", "--without-gossip", "--without-mingle"]
                naive = start_worker(
                    [str(BIN / "celery"), *argv, f"--queues=naive{tag}"], naive_env, naive_log
                )
                processes.append(naive)
                naive_cpu_before = cpu_seconds(naive)
                os.environ.update({k: naive_env[k] for k in ("NAIVE_BROKER", "NAIVE_QUEUE")})
                sender = naive_app()
                run = tag
                started_epoch = time.time()
                for url in urls:
                    sender.send_task("naive.caption", args=[url, run])
                with psycopg.connect(dsn, autocommit=True) as conn:
                    while True:
                        done = conn.execute(
                            f"SELECT count(*), extract(epoch FROM max(done_at)) FROM {NAIVE_TABLE} "
                            "WHERE run = %s",
                            (run,),
                        ).fetchone()
                        if done and done[0] >= args.items:
                            break
                        if naive.poll() is not None:
                            raise SystemExit(naive_log.read_text()[-3000:])
                        time.sleep(POLL_S)
                baseline = args.items / (float(done[1]) - started_epoch)
                baseline_cpu = cpu_seconds(naive) - naive_cpu_before
                sender.close()
                stop_worker(naive)

            result = {
                "items": args.items,
                "storage": args.storage,
                "items_per_s": round(args.items / wall_s, 1),
                "baseline_items_per_s": round(baseline, 1) if baseline else None,
                "storage_get_per_s": round(storage_get_per_s, 1),
                "efficiency": round(model_s / (wall_s * args.concurrency), 3) if model_s else None,
                "speedup": round(args.items / wall_s / baseline, 1) if baseline else None,
                "vs_storage": round(args.items / wall_s / storage_get_per_s, 2),
                "wall_s": round(wall_s, 2),
                "worker_cpu_ms_per_item": round(worker_cpu * 1000 / args.items, 3),
                "baseline_cpu_ms_per_item": round(baseline_cpu * 1000 / args.items, 3)
                if baseline_cpu
                else None,
                "submit_s": round(submit_s, 2),
                "model_ms_per_item": args.model_ms_per_item,
                "model_ms_per_batch": args.model_ms_per_batch,
                "batch": batch,
                "chunk_size": args.chunk_size,
                "concurrency": args.concurrency,
                "async_commit": args.async_commit,
                "image_bytes": len(store.read(keys[0])),
                "cpus": os.cpu_count(),
                "worker_chunks": chunks,
            }
        finally:
            for process in processes:
                stop_worker(process)
            for key in broker.scan_iter(f"*{tag}*"):
                broker.delete(key)
            dispose_engines()
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            if moto is not None:
                moto.terminate()
                moto.wait(10)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
