"""`ovis-batch worker`: one Celery worker process per GPU, each pinned with CUDA_VISIBLE_DEVICES.

The launcher itself never imports torch or touches CUDA: it counts GPUs with `nvidia-smi`, starts one child
per GPU (solo pool: the model lives in the process that runs the tasks), forwards SIGTERM / SIGINT for a
graceful stop, and restarts a child that dies.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger(__name__)

RESTART_DELAY_S = 5.0


def visible_gpus(spec: str) -> list[str]:
    """GPU indices for `spec`: "all"/"auto" (what nvidia-smi lists; none without GPUs), "none", or "0,1"."""
    spec = spec.strip().lower()
    if spec == "none":
        return []
    if spec not in ("all", "auto"):
        indices = [part.strip() for part in spec.split(",") if part.strip()]
        if not all(index.isdigit() for index in indices):
            raise ValueError(f"--gpus takes 'all', 'none' or indices like 0,1 (got {spec!r})")
        return indices
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    return [str(i) for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU ")]


def node_name(gpu: str | None) -> str:
    """The Celery node name of a worker: `ovis-gpu<N>@host`, or `ovis@host` without a GPU."""
    return f"{'ovis' if gpu is None else f'ovis-gpu{gpu}'}@{socket.gethostname()}"


def celery_argv(*, node: str, queues: Sequence[str], concurrency: int, loglevel: str) -> list[str]:
    """Arguments for Celery's `worker` command. A solo pool is given its concurrency of 1 too: Celery's
    default is the number of cores, which sets how many messages the worker reserves (prefetch) and so lets
    one GPU worker hold chunks others could run, and a priority job wait behind them."""
    pool = ["--pool=solo"] if concurrency <= 1 else ["--pool=prefork"]
    pool.append(f"--concurrency={max(1, concurrency)}")
    return [
        "worker",
        "-E",
        f"--hostname={node}",
        f"--loglevel={loglevel}",
        f"--queues={','.join(queues)}",
        "--without-gossip",
        "--without-mingle",
        *pool,
    ]


def supervise(gpus: Sequence[str], child_args: Sequence[str]) -> int:
    """Run one child worker per GPU until told to stop; return the worst exit status."""
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn(gpu: str) -> None:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu, OVIS_BATCH_DEVICE="cuda:0")
        argv = [
            sys.executable,
            "-m",
            "jobs.cli",
            "worker",
            "--gpus",
            "none",
            "--node",
            node_name(gpu),
            *child_args,
        ]
        children[gpu] = subprocess.Popen(argv, env=env)
        log.info("started worker for GPU %s (pid %d)", gpu, children[gpu].pid)

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for gpu in gpus:
        spawn(gpu)
    worst = 0
    while children:
        time.sleep(0.5)
        for gpu, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            del children[gpu]
            worst = max(worst, abs(code))
            if not stopping:
                log.warning(
                    "worker for GPU %s exited with %s; restarting in %.0fs", gpu, code, RESTART_DELAY_S
                )
                time.sleep(RESTART_DELAY_S)
                spawn(gpu)
    return worst
