"""The per-GPU launcher: Celery arguments of the worker processes it starts, and how it stops them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.plugins.workers import wait_for
from workers.launcher import celery_argv


def test_a_gpu_worker_runs_one_chunk_on_a_pool_thread_and_a_prefork_one_per_process() -> None:
    # Celery reserves concurrency x prefetch multiplier (1) messages: a GPU worker holds no chunk other
    # workers could run, and its consumer loop stays free while its one pool thread runs a chunk.
    gpu = celery_argv(node="gpu0@h", queues=["q"], concurrency=1, loglevel="INFO")
    assert "--pool=threads" in gpu and "--concurrency=1" in gpu
    prefork = celery_argv(node="cpu@h", queues=["q", "r"], concurrency=3, loglevel="INFO")
    assert "--pool=prefork" in prefork and "--concurrency=3" in prefork and "--queues=q,r" in prefork


# -- stopping the supervisor ---------------------------------------------------------------------------------
# The supervisor runs as a process of its own with simulated children (a few lines of Python per GPU), so that
# signals reach it as they reach `ovis-batch worker --gpus 0,1`. Each child leaves a file named after its GPU
# and pid once its SIGTERM handler is in place; `BEHAVIOUR_<gpu>` says how it lives and ends.
SUPERVISOR = """
import json, logging, sys
from workers.launcher import supervise
logging.basicConfig(level="INFO", format="%(message)s", stream=sys.stdout)
gpus, child, delay = json.loads(sys.argv[1])
sys.exit(supervise(gpus, [], command=lambda gpu: [sys.executable, "-c", child, gpu], restart_delay_s=delay))
"""
CHILD = """
import os, pathlib, signal, sys, time
gpu = sys.argv[1]
home = pathlib.Path(os.environ["CHILDREN"])
behaviour = os.environ.get("BEHAVIOUR_" + gpu, "serve")
first = not any(home.glob(gpu + "-*"))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1 if behaviour == "fail-on-stop" else 0))
(home / f"{gpu}-{os.getpid()}").touch()
if behaviour == "crash" or (behaviour == "leave-once" and first):
    time.sleep(float(os.environ.get("LIFE_S", "0")))
    sys.exit(3 if behaviour == "crash" else 0)
while True:
    time.sleep(0.05)
"""


@dataclass
class Supervised:
    """A supervisor process over simulated children, and what it and they left behind."""

    process: subprocess.Popen[str]
    children: Path
    log: Path

    def started(self) -> dict[str, list[int]]:
        """Pids of the children started so far, by GPU."""
        found: dict[str, list[int]] = {}
        for path in self.children.iterdir():
            gpu, pid = path.name.split("-")
            found.setdefault(gpu, []).append(int(pid))
        return found

    def pids(self) -> list[int]:
        return [pid for pids in self.started().values() for pid in pids]

    def text(self) -> str:
        return self.log.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def _supervisor(tmp: Path, gpus: list[str], restart_delay_s: float, **behaviour: str) -> Iterator[Supervised]:
    children = tmp / "children"
    children.mkdir()
    log = tmp / "supervisor.log"
    env = {**os.environ, "CHILDREN": str(children), **behaviour}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR, json.dumps([gpus, CHILD, restart_delay_s])],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    supervised = Supervised(process, children, log)
    try:
        yield supervised
    finally:
        for pid in [process.pid, *supervised.pids()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(10)


def _stop(supervised: Supervised) -> int:
    """SIGTERM the supervisor; its exit status, once it has ended (a bounded wait: it must end)."""
    supervised.process.send_signal(signal.SIGTERM)
    try:
        return supervised.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the supervisor did not exit after SIGTERM:\n{supervised.text()}") from None


#: Far longer than a stop takes; a supervisor still there after it never exits.
STOP_TIMEOUT_S = 30


def test_sigterm_while_waiting_to_restart_a_crashed_child_ends_everything(tmp_path: Path) -> None:
    # GPU 1's child crashes at once; its restart is an hour away: the stop must not wait for it, nor start it.
    with _supervisor(tmp_path, ["0", "1"], 3600, BEHAVIOUR_1="crash") as supervised:
        wait_for(lambda: "restarting in" in supervised.text(), 30, "the crash was not seen")
        wait_for(lambda: len(supervised.started().get("0", [])) == 1, 30, "GPU 0's child never started")
        assert _stop(supervised) == 0, supervised.text()
        started = supervised.started()
        assert {gpu: len(pids) for gpu, pids in started.items()} == {"0": 1, "1": 1}, "a child was restarted"
        assert not [pid for pid in supervised.pids() if _alive(pid)]


def test_sigterm_stops_every_child_and_exits_0(tmp_path: Path) -> None:
    with _supervisor(tmp_path, ["0", "1"], 5) as supervised:
        wait_for(lambda: len(supervised.started()) == 2, 30, "the children never started")
        assert _stop(supervised) == 0, supervised.text()
        assert not [pid for pid in supervised.pids() if _alive(pid)]


def test_a_child_that_fails_while_stopping_makes_the_exit_status_non_zero(tmp_path: Path) -> None:
    with _supervisor(tmp_path, ["0", "1"], 5, BEHAVIOUR_1="fail-on-stop") as supervised:
        wait_for(lambda: len(supervised.started()) == 2, 30, "the children never started")
        assert _stop(supervised) == 1, supervised.text()
        assert "exited with 1 while stopping" in supervised.text()
        assert not [pid for pid in supervised.pids() if _alive(pid)]


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(after_s=st.floats(min_value=0.0, max_value=0.6), life_s=st.floats(min_value=0.0, max_value=0.4))
def test_sigterm_at_any_moment_ends_the_supervisor_and_every_child(
    tmp_path_factory: pytest.TempPathFactory, after_s: float, life_s: float
) -> None:
    # GPU 1's first child leaves by itself after `life_s` and is restarted 0.2 s later: the stop lands while
    # children start, run, have just left, wait for their restart or start again.
    tmp = tmp_path_factory.mktemp("moment")
    with _supervisor(tmp, ["0", "1"], 0.2, BEHAVIOUR_1="leave-once", LIFE_S=str(life_s)) as supervised:
        wait_for(lambda: "started worker for GPU 1" in supervised.text(), 30, "the supervisor never started")
        time.sleep(after_s)
        assert _stop(supervised) == 0, supervised.text()
        assert not [pid for pid in supervised.pids() if _alive(pid)], supervised.text()
