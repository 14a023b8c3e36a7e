"""The whole system in the GPU benchmark: a real `ovis-batch worker` process, jobs submitted through the
producer API and timed from submission until they end, the GPU sampled meanwhile.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    """A timestamped line on stdout, flushed (the run's log is read while it runs)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def worker_env(values: dict[str, str], extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its OVIS_BATCH_ settings, with `values` as the worker's settings
    and the repository first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVIS_BATCH_")}
    env.update({f"OVIS_BATCH_{k.upper()}": v for k, v in values.items()})
    env.update(extra or {})
    env.update(
        PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    )
    return env


def start_worker(
    env: dict[str, str], log_path: Path, cwd: Path, gpus: str = "none"
) -> subprocess.Popen[bytes]:
    """`ovis-batch worker` in its own process group, its output in `log_path`."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker", "--gpus", gpus, "--loglevel", "INFO"],
            cwd=cwd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(worker: subprocess.Popen[bytes], log_path: Path, count: int, timeout: float) -> None:
    """Until `count` workers logged that they are ready (model loaded and warmed up)."""
    wait_for(
        lambda: log_path.read_text(errors="replace").count(" ready.") >= count,
        worker,
        log_path,
        timeout,
        "worker not ready",
    )


def wait_for(
    condition: Callable[[], bool],
    worker: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> None:
    """Poll `condition` until it holds; fail with the worker's log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} after {timeout:.0f}s:\n{log_path.read_text()[-3000:]}")
        time.sleep(interval)


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the worker's process group, SIGKILL if it is still there after 30 s."""
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)


class GpuSampler:
    """`nvidia-smi` every 200 ms while a job runs: mean utilisation and peak memory of the whole GPU."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        import shutil

        if shutil.which("nvidia-smi") is None:
            return self
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        self._process = subprocess.Popen([*query, "-lms", "200"], stdout=subprocess.PIPE, text=True)

        def read() -> None:
            assert self._process is not None and self._process.stdout is not None
            for line in self._process.stdout:
                try:
                    util, memory = (float(v) for v in line.split(",")[:2])
                except ValueError:
                    continue
                self.samples.append((util, memory))

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)

    def summary(self) -> dict[str, Any]:
        """Mean GPU utilisation (%) and peak memory used (GB) over the samples."""
        if not self.samples:
            return {}
        return {
            "gpu_util_mean_pct": round(statistics.mean(u for u, _ in self.samples), 1),
            "gpu_mem_used_peak_gb": round(max(m for _, m in self.samples) / 1024, 1),
            "samples": len(self.samples),
        }


def run_job(client: Any, kind: Any, source: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Submit one job and wait for its end, sampling the GPU meanwhile."""
    with GpuSampler() as sampler:
        report = submit_and_wait(client, kind, source, params, timeout)
    report.update(sampler.summary())
    return report


def submit_and_wait(
    client: Any, kind: Any, source: str, params: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Submit, poll the job's status until it ends, and say how long each part took."""
    start = time.perf_counter()
    job_id = client.submit(kind, source, params=params)
    submitted = time.perf_counter()
    deadline = time.monotonic() + max(30.0, timeout)
    while True:
        report = client.status(job_id)
        if report.status not in ("queued", "running"):
            break
        if time.monotonic() > deadline:
            return {"job_id": job_id, "error": "timed out", "done": report.done, "total": report.total}
        time.sleep(0.05)
    wall = time.perf_counter() - start
    run = (
        (report.finished_at - report.started_at).total_seconds()
        if report.started_at and report.finished_at
        else None
    )
    return {
        "job_id": job_id,
        "status": report.status,
        "items": report.total,
        "succeeded": report.succeeded,
        "failed": report.failed,
        "errors": client.errors_by_code(job_id) if report.failed else {},
        "submit_s": round(submitted - start, 3),
        "wall_s": round(wall, 2),
        "started_to_finished_s": round(run, 2) if run is not None else None,
        # Submitted to first claim (the folder broker polls its queue once a second), plus the status poll.
        "wait_before_start_s": round(wall - run - (submitted - start), 2) if run is not None else None,
        "items_per_s": round(report.succeeded / wall, 4),
        "s_per_item": round(wall / max(1, report.succeeded), 3),
    }
