"""Liveness of a worker process: "making progress", not "answering".

The chunk loop beats whenever a step of a micro-batch ends (inputs ready, model call returned, results
recorded). A worker that runs a chunk and has not beaten for `stall_timeout_s` is stalled: its model calls
stop progressing. An idle worker is live as long as its consumer loop answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Running:
    """The chunk a worker runs: which job and range, and since when (monotonic clock)."""

    kind: str
    job_id: str
    start: int
    stop: int
    since: float
    #: Hands the chunk's items back after a stall, given the items in the model then (their attempt stays).
    hand_back: Callable[[frozenset[int]], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Snapshot:
    """What the worker is doing now, for the health command and the watchdog."""

    running: Running | None
    #: Seconds since the last beat while a chunk runs (0 when idle).
    quiet_s: float
    #: Chunks this process finished.
    chunks_done: int
    #: Items of the micro-batch in the model right now (those a stall is blamed on).
    in_model: frozenset[int] = frozenset()


class Liveness:
    """Beats of the chunk loop; read by the watchdog and answered to `ovis-batch ping`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: Running | None = None
        self._beat = time.monotonic()
        self._chunks_done = 0
        self._in_model: frozenset[int] = frozenset()

    def chunk_started(
        self,
        kind: str,
        job_id: str,
        start: int,
        stop: int,
        hand_back: Callable[[frozenset[int]], None] | None = None,
    ) -> None:
        """A chunk starts: beats are expected from now on; `hand_back` gives its items back if it stalls."""
        now = time.monotonic()
        with self._lock:
            self._running = Running(kind, job_id, start, stop, now, hand_back)
            self._beat = now

    def beat(self) -> None:
        """The chunk loop made progress."""
        self._beat = time.monotonic()

    def model_started(self, seqs: Collection[int]) -> None:
        """A micro-batch of these items enters the model."""
        with self._lock:
            self._in_model = frozenset(seqs)
            self._beat = time.monotonic()

    def model_ended(self) -> None:
        """The model call returned (or raised)."""
        with self._lock:
            self._in_model = frozenset()
            self._beat = time.monotonic()

    def chunk_ended(self) -> None:
        """The chunk ended (done, handed back or failed): the worker is idle."""
        with self._lock:
            self._running = None
            self._in_model = frozenset()
            self._chunks_done += 1
            self._beat = time.monotonic()

    def snapshot(self) -> Snapshot:
        """The current state."""
        with self._lock:
            running, beat, done, in_model = self._running, self._beat, self._chunks_done, self._in_model
        quiet = time.monotonic() - beat if running is not None else 0.0
        return Snapshot(running, quiet, done, in_model)


@dataclass(frozen=True)
class Health:
    """A worker's answer to the health command: `ok` is False for a stalled worker."""

    ok: bool
    #: "idle", "busy" or "stalled".
    state: str
    detail: str
    running: Running | None = None
    quiet_s: float = 0.0

    def as_reply(self) -> dict[str, object]:
        """The JSON-able reply sent through the broker."""
        reply: dict[str, object] = {
            "ok": self.ok,
            "state": self.state,
            "detail": self.detail,
            "quiet_s": round(self.quiet_s, 1),
        }
        if self.running is not None:
            reply.update(
                kind=self.running.kind,
                job_id=self.running.job_id,
                start=self.running.start,
                stop=self.running.stop,
            )
        return reply


def assess(snapshot: Snapshot, stall_timeout_s: float) -> Health:
    """Whether a worker in `snapshot` is live: idle, or busy and beating within `stall_timeout_s`."""
    running = snapshot.running
    if running is None:
        return Health(True, "idle", f"idle, {snapshot.chunks_done} chunks done")
    where = f"job {running.job_id} items {running.start}-{running.stop}"
    if snapshot.quiet_s > stall_timeout_s:
        return Health(
            False,
            "stalled",
            f"stalled: no progress for {snapshot.quiet_s:.0f}s on {where} (limit {stall_timeout_s:.0f}s)",
            running,
            snapshot.quiet_s,
        )
    return Health(
        True, "busy", f"busy on {where}, last progress {snapshot.quiet_s:.1f}s ago", running, snapshot.quiet_s
    )
