"""The HTTP API under load: a million-item job's status, alone, from several clients, and while another
million items are being submitted through the API; the jobs list and results pages beside it.

Starts a real `ovis-batch serve` (one uvicorn process, a bearer token configured, as deployed) on a fresh
PostgreSQL database with chunks published to Redis, and no worker, so the jobs stay queued. Through the API:

1. submits a JSONL manifest of N items by its path (`POST /v1/jobs` with `input`), timed;
2. reads that job's status (`GET /v1/jobs/{id}`) R times in a row, then R times from C clients at once;
3. starts a second submission of N items (`POST /v1/jobs`, with an Idempotency-Key) and, once the second job
   is listed as submitting, reads the first job's status back to back until that POST returns: only samples
   that ended before it returned count, so the submission was in progress for the whole sampling window;
4. submits small jobs of inline items until the list holds a full page, and reads the list (`GET /v1/jobs`)
   and pages of the first job's results (`GET /v1/jobs/{id}/results`, 1,000 rows from random places).

Latencies are wall-clock times of whole requests as a client sees them (requests' Session, keep-alive), body
read included, on the same machine as the server, PostgreSQL and Redis.

    python bench/api_load.py --items 1000000

Prints one JSON object as its last line and writes it to bench/results/ (bench/raw_result.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gpu_system import stop_worker
from bench.raw_result import write_result
from bench.submit_scale import write_manifest
from jobs.db import dispose_engines, upgrade
from jobs.http.auth import new_token, token_entry

#: The claim this benchmark checks: status of a million-item job answers within this, also under load.
STATUS_TARGET_MS = 50.0
#: Rows per results page read.
RESULTS_PAGE = 1000
#: Jobs the list is read with (its default page).
LIST_PAGE = 50
#: Inline items per small job that fills the list.
INLINE_ITEMS = 100


# -- pure parts (unit-tested) --------------------------------------------------------------------------------
def percentile(ordered: Sequence[float], p: float) -> float:
    """The p-th percentile of sorted values by nearest rank (one of the values, never interpolated)."""
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """Count, p50, p95, p99, max and mean of latencies in milliseconds, rounded to 0.01 ms."""
    ordered = sorted(samples_ms)
    return {
        "n": len(ordered),
        "p50_ms": round(percentile(ordered, 50), 2),
        "p95_ms": round(percentile(ordered, 95), 2),
        "p99_ms": round(percentile(ordered, 99), 2),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(sum(ordered) / len(ordered), 2),
    }


@dataclass(frozen=True)
class Sample:
    """One request: when it started and ended (perf_counter seconds)."""

    start: float
    end: float

    @property
    def ms(self) -> float:
        """Its latency in milliseconds."""
        return (self.end - self.start) * 1000


@dataclass
class Window:
    """Samples taken while a submission ran: only those inside [opened, closed] count."""

    #: When the submission was seen in progress (the second job listed as submitting).
    opened: float
    #: When the submission's POST returned.
    closed: float
    samples: list[Sample] = field(default_factory=list)

    def inside(self) -> list[Sample]:
        """The samples that started after the window opened and ended before it closed."""
        return [s for s in self.samples if s.start >= self.opened and s.end <= self.closed]

    def report(self) -> dict[str, Any]:
        """The inside samples' latencies, the window's bounds and whether it held throughout."""
        kept = self.inside()
        first, last = (kept[0].start, kept[-1].end) if kept else (self.opened, self.opened)
        return {
            "status": summarize([s.ms for s in kept]) if kept else {"n": 0},
            "samples_dropped": len(self.samples) - len(kept),
            "sampling_s": round(last - first, 2),
            "submission_seen_before_first_sample_s": round(first - self.opened, 3),
            "last_sample_before_submission_returned_s": round(self.closed - last, 3),
            "in_progress_throughout": bool(kept) and self.opened <= first and last <= self.closed,
        }


# -- the server ----------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """`ovis-batch serve` on 127.0.0.1:port with `env`; yields its base URL once /v1/health answers ok."""
    command = [str(Path(sys.executable).with_name("ovis-batch")), "serve", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(
                    f"ovis-batch serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                if requests.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"ovis-batch serve did not answer within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        stop_worker(process)


class Api:
    """A client of the API: one keep-alive session per thread, every call timed."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        """This thread's session."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.token}"
            self._local.session = session
        return session

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[requests.Response, Sample]:
        """The response (body read) and its timing; an error status stops the benchmark."""
        start = time.perf_counter()
        response = self.session.request(method, self.url + path, timeout=900, **kwargs)
        end = time.perf_counter()
        if response.status_code >= 400:
            raise SystemExit(f"{method} {path}: HTTP {response.status_code}: {response.text[:2000]}")
        return response, Sample(start, end)

    def timed(
        self, path: str, count: int, params: Callable[[int], dict[str, Any]] | None = None
    ) -> list[float]:
        """`count` GETs of `path` in a row; their latencies in ms."""
        return [self.call("GET", path, params=params(i) if params else None)[1].ms for i in range(count)]


def concurrently(api: Api, path: str, count: int, clients: int) -> dict[str, Any]:
    """`count` GETs of `path` shared by `clients` threads at once; latencies and requests per second."""
    share = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(lambda n: api.timed(path, n), share))
    wall = time.perf_counter() - started
    return {
        **summarize([ms for run in runs for ms in run]),
        "clients": clients,
        "requests_per_s": round(count / wall, 1),
    }


def status_during_submission(api: Api, first: str, manifest: Path, cap: int) -> dict[str, Any]:
    """Status of `first`, read back to back while `manifest` is submitted as a second job."""
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def submit() -> None:
        try:
            body = {"kind": "caption", "input": str(manifest)}
            key = {"Idempotency-Key": f"bench-{uuid.uuid4().hex}"}
            response, sample = api.call("POST", "/v1/jobs", json=body, headers=key)
            outcome.update(job=response.json()["id"], started=sample.start, returned=sample.end)
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc
        finally:
            done.set()

    poster = threading.Thread(target=submit, name="second-submission")
    poster.start()
    second: dict[str, Any] | None = None
    while second is None and not done.is_set():
        jobs = api.call("GET", "/v1/jobs", params={"limit": 5})[0].json()["jobs"]
        second = next((job for job in jobs if job["id"] != first and job["submitting"]), None)
        if second is None:
            time.sleep(0.02)
    opened = time.perf_counter()
    samples: list[Sample] = []
    while second is not None and not done.is_set() and len(samples) < cap:
        samples.append(api.call("GET", f"/v1/jobs/{first}")[1])
    poster.join()
    if "error" in outcome:
        raise outcome["error"]
    if second is None:
        raise SystemExit("the second submission ended before it was seen in progress: use more --items")
    window = Window(opened=opened, closed=outcome["returned"], samples=samples)
    final = api.call("GET", f"/v1/jobs/{outcome['job']}")[0].json()
    return {
        **window.report(),
        "ended_by": "sample cap" if len(samples) >= cap else "submission returned",
        "second_job_items_when_seen": second["total"],
        "second_job_items": final["total"],
        "second_submit_s": round(outcome["returned"] - outcome["started"], 2),
    }


# -- the run -------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, database_url: str, folder: Path) -> dict[str, Any]:
    """The measurements, against a server on `database_url` with its files in `folder`."""
    manifests = [folder / "first.jsonl", folder / "second.jsonl"]
    for manifest in manifests:
        write_manifest(manifest, args.items)
    token = new_token()
    queue = f"bench{uuid.uuid4().hex[:8]}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("OVIS_BATCH_")}
    env.update(
        OVIS_BATCH_HOME=str(folder / "home"),
        OVIS_BATCH_DATABASE_URL=database_url,
        OVIS_BATCH_BROKER_URL=args.redis,
        OVIS_BATCH_QUEUE=queue,
        OVIS_BATCH_INPUT_ROOTS=str(folder),
        OVIS_BATCH_STORAGE_URL=str(folder / "outputs"),
        OVIS_BATCH_API_TOKENS=token_entry("bench", "submit", token),
    )
    broker = redis.Redis.from_url(args.redis)
    try:
        with serving(env, free_port(), folder / "serve.log") as url:
            return measure(Api(url, token), args, manifests)
    finally:
        for key in broker.scan_iter(f"{queue}*"):
            broker.delete(key)


def measure(api: Api, args: argparse.Namespace, manifests: list[Path]) -> dict[str, Any]:
    """Every measurement, in order; the jobs stay queued (no worker runs)."""
    response, sample = api.call("POST", "/v1/jobs", json={"kind": "caption", "input": str(manifests[0])})
    first = response.json()["id"]
    submit_s = sample.end - sample.start
    status = api.call("GET", f"/v1/jobs/{first}")[0].json()
    assert status["total"] == args.items == status["queued"], status

    api.timed(f"/v1/jobs/{first}", 20)  # warm: connections, plans, caches
    sequential = summarize(api.timed(f"/v1/jobs/{first}", args.requests))
    parallel = concurrently(api, f"/v1/jobs/{first}", args.requests, args.clients)
    during = status_during_submission(api, first, manifests[1], args.during_cap)

    inline = []
    for n in range(LIST_PAGE - 2):
        items = [
            {"id": f"p{i}", "prompt": f"a lighthouse at dusk, study {n}-{i}"} for i in range(INLINE_ITEMS)
        ]
        inline.append(api.call("POST", "/v1/jobs", json={"kind": "generate", "items": items})[1].ms)
    listed = api.call("GET", "/v1/jobs", params={"limit": LIST_PAGE})[0].json()["jobs"]
    assert len(listed) == LIST_PAGE, len(listed)
    jobs_list = summarize(api.timed("/v1/jobs", args.requests // 5, lambda _: {"limit": LIST_PAGE}))

    places = random.Random(7)

    def page(_: int) -> dict[str, Any]:
        return {"after": places.randrange(args.items - RESULTS_PAGE), "limit": RESULTS_PAGE}

    rows = api.call("GET", f"/v1/jobs/{first}/results", params=page(0))[0].text.count("\n")
    assert rows == RESULTS_PAGE, rows
    results = summarize(api.timed(f"/v1/jobs/{first}/results", args.requests // 5, page))

    return {
        "items": args.items,
        "submit_s": round(submit_s, 2),
        "status_p50_ms": sequential["p50_ms"],
        "status_p99_ms": sequential["p99_ms"],
        "status_concurrent_p99_ms": parallel["p99_ms"],
        "during_submit_p50_ms": during["status"].get("p50_ms"),
        "during_submit_p99_ms": during["status"].get("p99_ms"),
        "during_submit_max_ms": during["status"].get("max_ms"),
        "submission_in_progress_throughout": during["in_progress_throughout"],
        "list_p50_ms": jobs_list["p50_ms"],
        "results_page_p50_ms": results["p50_ms"],
        "cpus": os.cpu_count(),
        "status": sequential,
        "status_concurrent": parallel,
        "status_during_submission": during,
        "list": {**jobs_list, "jobs": LIST_PAGE},
        "results_page": {**results, "rows": RESULTS_PAGE},
        "inline_submit": {**summarize(inline), "items": INLINE_ITEMS},
        "targets": {
            "status_p99_under_50_ms": sequential["p99_ms"] < STATUS_TARGET_MS,
            "status_during_submit_p99_under_50_ms": (during["status"].get("p99_ms") or math.inf)
            < STATUS_TARGET_MS,
        },
        "note": "one `ovis-batch serve` process (uvicorn, its access log on), a bearer token; PostgreSQL, "
        "Redis and the benchmark's clients on the same machine; no worker runs",
    }


def main() -> None:
    """Run the benchmark and print its JSON line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000, help="items of each of the two big jobs")
    parser.add_argument("--requests", type=int, default=500, help="status requests per measurement")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients of the second measurement")
    parser.add_argument(
        "--during-cap", type=int, default=20_000, help="most status requests while the second job submits"
    )
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="a database on the server; the benchmark creates and drops its own beside it",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--no-save", action="store_true", help="print only; write no file to bench/results/")
    args = parser.parse_args()

    name = f"ovis_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    base = args.postgres.rsplit("/", 1)[0]
    database_url = f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        upgrade(database_url)
        with tempfile.TemporaryDirectory(prefix="ovis-bench-api-") as tmp:
            result = run(args, database_url, Path(tmp))
    finally:
        dispose_engines()
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    if not args.no_save:
        print(f"wrote {write_result('api_load', result)}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
