"""A running chunk tells the worker's liveness when it starts, beats as each step of a micro-batch ends, and
says when it ends however it ends (SQLite, local files, the torch-free backend)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path

import pytest

from jobs.lifecycle import JobKind
from tests.helpers import embedded_settings, write_photos
from workers.chunk import ChunkInterrupted, run_chunk
from workers.embedded import EmbeddedRunner
from workers.health import Liveness

BATCH = 2
CHUNK = 8


class Recorded(Liveness):
    """Liveness that also keeps what it was told, and on which threads it beat."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[tuple[str, str, int, int]] = []
        self.ended = 0
        self.beats: Counter[str] = Counter()
        self.model_calls: list[list[int]] = []
        self.hand_backs: list[Callable[[frozenset[int]], None] | None] = []

    def chunk_started(
        self,
        kind: str,
        job_id: str,
        start: int,
        stop: int,
        hand_back: Callable[[frozenset[int]], None] | None = None,
    ) -> None:
        self.started.append((kind, job_id, start, stop))
        self.hand_backs.append(hand_back)
        super().chunk_started(kind, job_id, start, stop, hand_back)

    def model_started(self, seqs: Collection[int]) -> None:
        self.model_calls.append(sorted(seqs))
        super().model_started(seqs)

    def beat(self) -> None:
        self.beats[threading.current_thread().name.rsplit("_", 1)[0]] += 1
        super().beat()

    def chunk_ended(self) -> None:
        self.ended += 1
        super().chunk_ended()


@pytest.fixture
def runner(tmp_path: Path) -> EmbeddedRunner:
    write_photos(tmp_path / "in", count=2 * CHUNK, size=48)
    settings = embedded_settings(tmp_path, chunk_size=CHUNK, caption_batch=BATCH, io_threads=2)
    runner = EmbeddedRunner(settings)
    runner.runtime.liveness = Recorded()
    runner.runtime.load()
    return runner


def _liveness(runner: EmbeddedRunner) -> Recorded:
    assert isinstance(runner.runtime.liveness, Recorded)
    return runner.runtime.liveness


def test_a_chunk_beats_at_every_step_of_its_micro_batches(runner: EmbeddedRunner) -> None:
    job_id = runner.client.submit(JobKind.CAPTION, str(runner.settings.home / "in"))
    run_chunk(runner.runtime, JobKind.CAPTION, job_id, 0, CHUNK)
    liveness = _liveness(runner)
    assert (liveness.started, liveness.ended) == ([("caption", job_id, 0, CHUNK)], 1)
    batches = CHUNK // BATCH
    # The model's thread: inputs ready and model call returned, per micro-batch.
    assert liveness.beats[threading.current_thread().name] == 2 * batches
    # The bookkeeping thread: the claim, a record per micro-batch, the finish (and a checkpoint or two).
    assert liveness.beats["ovis-record"] >= batches + 2
    # The I/O threads: each group of items prepared.
    assert liveness.beats["ovis-io"] >= batches
    # Each micro-batch's items were in the model in turn (what a stall is blamed on), and the chunk can be
    # handed back by the watchdog.
    assert liveness.model_calls == [list(range(b, b + BATCH)) for b in range(0, CHUNK, BATCH)]
    assert liveness.hand_backs[0] is not None
    snapshot = liveness.snapshot()
    assert (snapshot.running, snapshot.chunks_done, snapshot.in_model) == (None, 1, frozenset())


def test_a_chunk_that_ends_early_still_says_it_ended(runner: EmbeddedRunner) -> None:
    job_id = runner.client.submit(JobKind.CAPTION, str(runner.settings.home / "in"))
    runner.runtime.stopping.set()
    with pytest.raises(ChunkInterrupted):
        run_chunk(runner.runtime, JobKind.CAPTION, job_id, 0, CHUNK)
    run_chunk(runner.runtime, JobKind.EDIT, job_id, 0, CHUNK)  # refused: a chunk of another kind
    liveness = _liveness(runner)
    assert liveness.started == [("caption", job_id, 0, CHUNK), ("edit", job_id, 0, CHUNK)]
    assert liveness.ended == 2
    assert liveness.snapshot().running is None
