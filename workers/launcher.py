"""`ovis-batch worker`: one Celery worker process per GPU, each pinned with CUDA_VISIBLE_DEVICES.

The launcher itself never imports torch or touches CUDA: it counts GPUs with `nvidia-smi`, starts one child
per GPU (the model lives in the process that runs the tasks, on one pool thread), forwards SIGTERM / SIGINT
for a graceful stop, restarts a child that dies (or that ended itself because its chunk stalled), and exits
once every child has ended after a stop.
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
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger(__name__)

RESTART_DELAY_S = 5.0
#: How often the supervisor looks at its children, its restart times and the signals it was sent.
POLL_S = 0.2


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
    """Arguments for Celery's `worker` command.

    One process per GPU runs its chunks on one pool thread (`--pool=threads --concurrency=1`): the model lives
    in the process, one chunk runs at a time, and the consumer loop stays free to send heartbeats and task
    events and to answer `ping` while a chunk runs (a solo pool blocks it for the whole chunk, and Flower then
    shows a busy worker offline). The concurrency of 1 also keeps the worker from reserving messages other
    workers could run. A CPU worker with several processes uses a prefork pool.
    """
    pool = ["--pool=threads"] if concurrency <= 1 else ["--pool=prefork"]
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


def worker_command(gpu: str, child_args: Sequence[str]) -> list[str]:
    """The command line of the child worker for one GPU."""
    return [
        sys.executable,
        "-m",
        "workers.cli",
        "worker",
        "--gpus",
        "none",
        "--node",
        node_name(gpu),
        *child_args,
    ]


class Supervisor:
    """One child worker per GPU: each started, restarted `restart_delay_s` after it dies, and all stopped by
    the first SIGTERM / SIGINT, which is forwarded to them (a later one too).

    Once asked to stop, it starts no child and waits for the running ones to end. Its exit status is 0 when
    each of them exited 0 or died of a forwarded signal; a child that crashed earlier was restarted or was
    about to be, and is only logged. Anything else a child ends with during the stop is a failure: the
    largest such status (128 + N for a signal N), like a shell's.
    """

    def __init__(
        self,
        gpus: Sequence[str],
        command: Callable[[str], Sequence[str]],
        *,
        restart_delay_s: float = RESTART_DELAY_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.gpus = list(gpus)
        self.command = command
        self.restart_delay_s = restart_delay_s
        self.poll_s = poll_s
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        #: When each crashed child is started again (monotonic clock).
        self.restart_at: dict[str, float] = {}
        #: Signals asked to stop, in order; the signal handler only appends, the loop forwards.
        self.stop_signals: list[int] = []
        self._forwarded: dict[int, int] = {}  # pid -> how many of stop_signals it was sent
        self._failures: list[int] = []

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return bool(self.stop_signals)

    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        """Signal handler: stop every child with `signum` and exit once they have ended."""
        self.stop_signals.append(signum)

    def run(self) -> int:
        """Start the children and look after them until asked to stop and all have ended; the exit status."""
        for gpu in self.gpus:
            if not self.stopping:
                self._spawn(gpu)
        while self.children or (self.restart_at and not self.stopping):
            if self.stopping:
                self.restart_at.clear()
                self._forward()
            self._reap()
            self._restart_due()
            time.sleep(self.poll_s)
        return max(self._failures, default=0)

    def _spawn(self, gpu: str) -> None:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu, OVIS_BATCH_DEVICE="cuda:0")
        child = subprocess.Popen(list(self.command(gpu)), env=env)
        self.children[gpu] = child
        log.info("started worker for GPU %s (pid %d)", gpu, child.pid)

    def _forward(self) -> None:
        # Here, not in the signal handler: a child started while the handler ran still gets the signal.
        signals = list(self.stop_signals)
        for child in self.children.values():
            for signum in signals[self._forwarded.get(child.pid, 0) :]:
                if child.poll() is None:
                    child.send_signal(signum)
            self._forwarded[child.pid] = len(signals)

    def _reap(self) -> None:
        for gpu, child in list(self.children.items()):
            code = child.poll()
            if code is None:
                continue
            del self.children[gpu]
            self._forwarded.pop(child.pid, None)
            if self.stopping:
                if code != 0 and -code not in self.stop_signals:
                    log.error("worker for GPU %s exited with %s while stopping", gpu, code)
                    self._failures.append(128 - code if code < 0 else code)
                continue
            log.warning(
                "worker for GPU %s exited with %s; restarting in %.0fs", gpu, code, self.restart_delay_s
            )
            self.restart_at[gpu] = time.monotonic() + self.restart_delay_s

    def _restart_due(self) -> None:
        for gpu, at in list(self.restart_at.items()):
            if not self.stopping and time.monotonic() >= at:
                del self.restart_at[gpu]
                self._spawn(gpu)


def supervise(
    gpus: Sequence[str],
    child_args: Sequence[str],
    *,
    command: Callable[[str], Sequence[str]] | None = None,
    restart_delay_s: float = RESTART_DELAY_S,
) -> int:
    """Run one child worker per GPU until SIGTERM / SIGINT; return the exit status (see Supervisor).
    `command(gpu)` gives a child's command line (default: `ovis-batch worker` for that GPU)."""
    supervisor = Supervisor(
        gpus,
        command or (lambda gpu: worker_command(gpu, child_args)),
        restart_delay_s=restart_delay_s,
    )
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()
