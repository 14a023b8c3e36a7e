"""The health command every worker answers, the client side of `ovis-batch ping`, and the stall watchdog.

A worker's consumer loop stays free while a chunk runs (the chunk runs on a pool thread or in a pool
process), so it answers the `ovis_health` broadcast within milliseconds whether idle or busy. The answer says
whether the chunk is making progress (workers/health.py). A worker whose chunk has made no progress for
`stall_timeout_s` is stalled: the watchdog logs it, hands the chunk's items back to the queue (their attempt
counted, so an input that hangs the model every time ends quarantined) and ends the process with
`EXIT_STALLED`, so that its supervisor (`ovis-batch worker` over GPUs, docker's restart policy) starts it
again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from celery.worker.control import inspect_command
from sqlalchemy import select

from jobs.db import session_scope
from jobs.lifecycle import ItemStatus
from jobs.models import Item, Job
from workers.health import Health, Running, assess
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

#: The broadcast command name workers answer.
HEALTH_COMMAND = "ovis_health"
#: Exit status of a worker process that ended itself because its chunk stalled (EX_SOFTWARE).
EXIT_STALLED = 70


def worker_health(runtime: WorkerRuntime | None, stall_timeout_s: float) -> dict[str, object]:
    """This process's answer: its chunk's progress where it runs chunks itself. The parent of a prefork pool
    runs none (its children watch themselves and are replaced by the pool when they end)."""
    if runtime is None:
        return {"ok": True, "state": "pool", "detail": "prefork pool: each process watches its own chunks"}
    return assess(runtime.liveness.snapshot(), stall_timeout_s).as_reply()


@inspect_command(name=HEALTH_COMMAND)
def _ovis_health(state: Any, **_: Any) -> dict[str, object]:
    """Whether this worker is making progress: idle, busy (with its chunk) or stalled."""
    from jobs.settings import get_settings

    return worker_health(WorkerRuntime.existing(), get_settings().stall_timeout_s)


def ask_health(app: Celery, nodes: Sequence[str], timeout: float) -> dict[str, dict[str, Any] | None]:
    """Each node's answer to the health command within `timeout` seconds; None for a node that did not
    answer (gone, or its consumer loop hung)."""
    replies = app.control.broadcast(
        HEALTH_COMMAND, destination=list(nodes), reply=True, timeout=timeout, limit=len(nodes)
    )
    answers: dict[str, dict[str, Any] | None] = dict.fromkeys(nodes)
    for reply in replies or []:
        for node, answer in reply.items():
            if node in answers:
                answers[node] = answer if isinstance(answer, dict) else {"ok": False, "detail": str(answer)}
    return answers


def describe(answers: dict[str, dict[str, Any] | None], timeout: float) -> tuple[bool, list[str]]:
    """Whether every node is live, and one line per node for `ovis-batch ping`."""
    lines = []
    for node, answer in sorted(answers.items()):
        if answer is None:
            lines.append(f"{node}: no answer within {timeout:g}s")
        else:
            lines.append(f"{node}: {answer.get('detail', answer.get('state', '?'))}")
    live = bool(answers) and all(answer is not None and answer.get("ok") for answer in answers.values())
    return live, lines


def _running_seqs(runtime: WorkerRuntime, running: Running) -> tuple[list[int], int]:
    """The items of the stalled chunk's job this worker holds, and the job's priority."""
    with session_scope(runtime.settings.resolved_database_url) as session:
        seqs = session.scalars(
            select(Item.seq).where(
                Item.job_id == running.job_id,
                Item.worker == runtime.name,
                Item.status == ItemStatus.RUNNING.value,
            )
        ).all()
        priority = session.scalar(select(Job.priority).where(Job.id == running.job_id)) or 0
    return list(seqs), int(priority)


class Watchdog:
    """Checks the chunk loop's beats every `interval_s`; ends the process when they stop for
    `stall_timeout_s`."""

    def __init__(
        self,
        runtime: WorkerRuntime,
        stall_timeout_s: float,
        *,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        self.runtime = runtime
        self.stall_timeout_s = stall_timeout_s
        self.interval_s = min(5.0, max(0.2, stall_timeout_s / 4))
        self._exit = exit_process
        self._stop = threading.Event()

    def start(self) -> None:
        """Watch on a daemon thread."""
        threading.Thread(target=self._loop, name="ovis-watchdog", daemon=True).start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            snapshot = self.runtime.liveness.snapshot()
            health = assess(snapshot, self.stall_timeout_s)
            if not health.ok and health.running is not None:
                self.stalled(health, snapshot.in_model)
                return

    def stalled(self, health: Health, in_model: frozenset[int] = frozenset()) -> None:
        """Report the stall, hand the chunk's items back, and end the process."""
        running = health.running
        assert running is not None
        log.critical(
            "worker %s %s; handing its items back and exiting so that it is started again",
            self.runtime.name,
            health.detail,
            extra={"job_id": running.job_id},
        )
        try:
            self._hand_back(running, in_model)
        except Exception:
            log.error("could not hand the stalled chunk's items back; their leases expire", exc_info=True)
        finally:
            logging.shutdown()
            self._exit(EXIT_STALLED)

    def _hand_back(self, running: Running, in_model: frozenset[int]) -> None:
        # The chunk's ledger knows which attempts it counted: only the items in the hung model call keep
        # theirs, so an input that hangs the model every time ends quarantined and its neighbours do not. When
        # the ledger's thread is the one stuck (the database hangs), every attempt stays counted.
        if running.hand_back is not None:
            try:
                running.hand_back(in_model)
                return
            except TimeoutError:
                log.error("the chunk's bookkeeping does not answer; handing its items back directly")
        seqs, priority = _running_seqs(self.runtime, running)
        if seqs:
            self.runtime.hand_back(running.job_id, running.kind, priority, seqs, uncount=(), publish=seqs)


def start_watchdog(runtime: WorkerRuntime, stall_timeout_s: float) -> Watchdog:
    """Watch this worker process's chunks."""
    watchdog = Watchdog(runtime, stall_timeout_s)
    watchdog.start()
    return watchdog
