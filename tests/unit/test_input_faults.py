"""Nothing an item's input does stops the chunk, and a chunk sent as the wrong kind of task touches nothing.

Through the embedded runner (the chunk code a worker runs, in this process): whatever is raised while one
item is fetched, decoded or prepared ends that item (`internal_error` for what is no bad input, logged at
ERROR with its traceback), its neighbours run, and a transient storage fault still hands the chunk back.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

import storage
from gpu_model.fake import FakeBackend
from gpu_model.requests import CaptionRequest, EditRequest, GenerateRequest
from jobs.db import session_scope
from jobs.lifecycle import JobKind
from jobs.models import Item
from jobs.settings import Settings
from tests.helpers import embedded_settings, sample_photo
from workers import prepare
from workers.chunk import run_chunk
from workers.embedded import EmbeddedRunner

#: First bytes of an input -> what decoding it raises: what no check foresaw, a bug, a recursion.
FAULTS: dict[bytes, BaseException] = {
    b"MEMORY": MemoryError(),
    b"RECURSE": RecursionError("maximum recursion depth exceeded"),
    b"DECODER-BUG": KeyError("a decoder's bug"),
}
#: The width of an image the backend's `prepare` refuses with ValueError.
REFUSED_WIDTH = 17


class _PickyBackend(FakeBackend):
    """A backend whose `prepare` raises ValueError for some images, against its contract."""

    def prepare(
        self, request: CaptionRequest | GenerateRequest | EditRequest
    ) -> CaptionRequest | GenerateRequest | EditRequest:
        if isinstance(request, CaptionRequest) and request.image.width == REFUSED_WIDTH:
            raise ValueError(f"cannot prepare an image {REFUSED_WIDTH} pixels wide")
        return request


def _items(settings: Settings, job_id: str) -> dict[str, Item]:
    with session_scope(settings.resolved_database_url) as session:
        return {i.key: i for i in session.scalars(select(Item).where(Item.job_id == job_id))}


def test_any_exception_while_preparing_an_item_fails_that_item_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(4):
        sample_photo(size=48).save(folder / f"good{index}.png")
    sample_photo(size=48).save(folder / "flaky.png")
    Image.new("RGB", (REFUSED_WIDTH, 20), "red").save(folder / "refused-by-prepare.png")
    for marker in FAULTS:
        (folder / f"{marker.decode().lower()}.png").write_bytes(marker + b" and some bytes")
    (folder / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")

    real_decode, real_read = prepare.decode_image, prepare.read_allowed_input
    reads: Counter[str] = Counter()

    def decode(data: bytes, **limits: int) -> Image.Image:
        for marker, error in FAULTS.items():
            if data.startswith(marker):
                raise error
        return real_decode(data, **limits)

    def read(url: str, roots: Sequence[str], s3: Any, max_bytes: int | None = None) -> bytes:
        reads[Path(url).name] += 1
        if url.endswith("flaky.png") and reads["flaky.png"] == 1:
            raise storage.StorageUnavailable(f"{url}: connection reset (simulated)")
        return real_read(url, roots, s3, max_bytes)

    monkeypatch.setattr(prepare, "decode_image", decode)
    monkeypatch.setattr(prepare, "read_allowed_input", read)
    settings = embedded_settings(tmp_path, chunk_size=16)
    with caplog.at_level(logging.WARNING, logger="workers.prepare"):
        report = EmbeddedRunner(settings, _PickyBackend()).run(JobKind.CAPTION, str(folder))

    items = _items(settings, report.id)
    outcome = {key: (item.status, item.error_code) for key, item in items.items()}
    internal = {"memory.png", "recurse.png", "decoder-bug.png", "refused-by-prepare.png"}
    expected: dict[str, tuple[str, str | None]] = {key: ("succeeded", None) for key in items}
    expected.update({key: ("failed", "internal_error") for key in internal})
    expected["truncated.png"] = ("failed", "invalid_image")  # bad input keeps its own code
    assert outcome == expected
    assert items["memory.png"].error_message == "MemoryError"
    assert (
        items["refused-by-prepare.png"].error_message == "ValueError: cannot prepare an image 17 pixels wide"
    )
    # The transient fault handed the chunk back; its second run read the input again and succeeded.
    assert reads["flaky.png"] == 2 and items["flaky.png"].output
    logged = {record.getMessage().split()[1]: record for record in caplog.records}
    assert {key for key, record in logged.items() if record.levelno == logging.ERROR} == internal
    assert all(logged[key].exc_info is not None for key in internal), "an internal error without traceback"
    assert logged["truncated.png"].levelno == logging.WARNING and logged["truncated.png"].exc_info is None


def test_a_chunk_sent_as_another_kind_of_task_is_dropped_untouched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sample_photo(size=48).save(tmp_path / "cat.png")
    manifest = tmp_path / "edits.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"id": f"e{i}", "image": "cat.png", "instruction": "make it red"}) + "\n"
            for i in range(3)
        )
    )
    settings = embedded_settings(tmp_path)
    runner = EmbeddedRunner(settings)
    runner.runtime.load()
    job_id = runner.client.submit(JobKind.EDIT, str(manifest))

    with caplog.at_level(logging.WARNING, logger="workers.ledger"):
        outcome = run_chunk(runner.runtime, JobKind.CAPTION, job_id, 0, 3)

    assert (outcome.claimed, outcome.succeeded, outcome.failed) == (0, 0, 0)
    untouched = {
        key: (i.status, i.attempts, i.worker, i.output) for key, i in _items(settings, job_id).items()
    }
    assert untouched == {f"e{i}": ("queued", 0, None, None) for i in range(3)}
    assert runner.client.status(job_id).status == "queued"
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        "came as a caption task for a job of kind edit, whose chunks are ovis.edit tasks"
        in warning.getMessage()
    )

    while not runner.dispatcher.chunks.empty():  # the chunks submission sent, as edit tasks
        sent = runner.dispatcher.chunks.get_nowait()
        run_chunk(runner.runtime, sent.kind, sent.job_id, sent.start, sent.stop)
    items = _items(settings, job_id)
    assert all(i.status == "succeeded" and (i.output or "").endswith(".png") for i in items.values())
