"""The chunk pipeline end to end in one process: SQLite, local storage, the torch-free backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from gpu_model import BackendOptions, BackendOutOfMemory, CaptionRequest
from gpu_model.fake import FakeBackend
from jobs.db import session_scope
from jobs.errors import InputNotAllowed, InvalidParameters, InvalidSource
from jobs.keys import output_key
from jobs.lifecycle import ItemStatus, JobKind
from jobs.models import Item
from tests.helpers import embedded_settings, write_photos
from workers.chunk import run_chunk
from workers.embedded import EmbeddedRunner


def _items(settings, job_id: str) -> list[Item]:  # type: ignore[no-untyped-def]
    with session_scope(settings.resolved_database_url) as session:
        return list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.seq)))


def test_caption_job_with_one_corrupt_image(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    photos = write_photos(tmp_path / "in", count=6)
    photos[2].write_bytes(photos[2].read_bytes()[:300])  # truncated JPEG
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(tmp_path / "in"))
    assert (report.status, report.succeeded, report.failed, report.total) == ("partial", 5, 1, 6)
    items = _items(settings, report.id)
    bad = [i for i in items if i.status == ItemStatus.FAILED.value]
    assert [(i.key, i.error_code) for i in bad] == [("photo002.jpg", "invalid_image")]
    assert all(i.output and i.output.startswith("image ") for i in items if i.status == "succeeded")
    rows = [json.loads(line) for line in Path(report.export_url or "").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p.name for p in photos]


def test_generate_and_edit_write_images_under_deterministic_keys(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog\n")
    report = EmbeddedRunner(settings).run(JobKind.GENERATE, str(prompts), params={"width": 96, "height": 64})
    assert report.status == "succeeded" and report.total == 2
    for item in _items(settings, report.id):
        assert item.output == str(tmp_path / "outputs" / output_key(report.id, item.key, "png"))
        assert Image.open(item.output).size == (96, 64)

    write_photos(tmp_path / "in", count=2)
    manifest = tmp_path / "edits.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"id": f"e{i}", "image": f"in/photo{i:03d}.jpg", "instruction": "make it blue"}) + "\n"
            for i in range(2)
        )
    )
    report = EmbeddedRunner(settings).run(JobKind.EDIT, str(manifest))
    assert report.status == "succeeded"
    for item, photo in zip(_items(settings, report.id), sorted((tmp_path / "in").iterdir()), strict=True):
        assert Image.open(item.output or "").size == Image.open(photo).size


def test_same_inputs_and_seed_give_same_outputs(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\ny\n")
    first = EmbeddedRunner(settings).run(JobKind.GENERATE, str(prompts), params={"seed": 5})
    second = EmbeddedRunner(settings).run(JobKind.GENERATE, str(prompts), params={"seed": 5})
    a = [Image.open(i.output or "").getpixel((0, 0)) for i in _items(settings, first.id)]
    b = [Image.open(i.output or "").getpixel((0, 0)) for i in _items(settings, second.id)]
    assert a == b and a[0] != a[1]


def test_redelivered_chunk_skips_finished_items(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "in", count=4)
    runner = EmbeddedRunner(settings)
    report = runner.run(JobKind.CAPTION, str(tmp_path / "in"))
    again = run_chunk(runner.runtime, JobKind.CAPTION, report.id, 0, 4)
    assert (again.claimed, again.succeeded) == (0, 0)
    final = runner.client.status(report.id)
    assert (final.succeeded, final.total, final.status) == (4, 4, "succeeded")


class _FlakyBackend(FakeBackend):
    """Runs out of memory above batch 2 and raises on one poisoned prompt."""

    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        if len(requests) > 2:
            raise BackendOutOfMemory("CUDA out of memory (simulated)")
        if any(r.image.width == 1 for r in requests):
            raise RuntimeError("this image breaks the model")
        return super().caption(requests)


def test_out_of_memory_splits_and_a_failing_item_stands_alone(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, chunk_size=8)
    write_photos(tmp_path / "in", count=7)
    Image.new("RGB", (1, 5)).save(tmp_path / "in" / "photo003.jpg")
    backend = _FlakyBackend(BackendOptions(max_batch={"caption": 8}))
    report = EmbeddedRunner(settings, backend).run(JobKind.CAPTION, str(tmp_path / "in"))
    assert (report.succeeded, report.failed) == (6, 1)
    failed = [i for i in _items(settings, report.id) if i.status == "failed"]
    assert [(i.key, i.error_code) for i in failed] == [("photo003.jpg", "internal_error")]
    assert "breaks the model" in (failed[0].error_message or "")


def test_invalid_parameters_and_sources_are_refused_at_submit(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    runner = EmbeddedRunner(settings)
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    with pytest.raises(InvalidParameters, match="multiple of 16"):
        runner.client.submit(JobKind.GENERATE, str(prompts), params={"width": 100})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json\n')
    with pytest.raises(InvalidSource, match="line 2"):
        runner.client.submit(JobKind.GENERATE, str(bad))
    outside = tmp_path / "edits.jsonl"
    outside.write_text(json.dumps({"image": "/etc/passwd", "instruction": "x"}) + "\n")
    with pytest.raises(InputNotAllowed, match="outside the allowed input roots"):
        runner.client.submit(JobKind.EDIT, str(outside))
    assert runner.client.list() == []


def test_cancel_and_retry(tmp_path: Path) -> None:
    # Without read-ahead, the first chunk leaves the other four items queued (see test_chunk_readahead.py).
    settings = embedded_settings(tmp_path, read_ahead=False)
    write_photos(tmp_path / "in", count=8)
    runner = EmbeddedRunner(settings)
    job_id = runner.client.submit(JobKind.CAPTION, str(tmp_path / "in"))
    run_chunk(runner.runtime, JobKind.CAPTION, job_id, 0, 4)
    report = runner.client.cancel(job_id)
    assert (report.status, report.succeeded, report.cancelled) == ("cancelled", 4, 4)
    assert run_chunk(runner.runtime, JobKind.CAPTION, job_id, 4, 8).claimed == 0
    assert runner.client.resume(job_id) == 4
    while not runner.dispatcher.chunks.empty():
        chunk = runner.dispatcher.chunks.get()
        run_chunk(runner.runtime, chunk.kind, chunk.job_id, chunk.start, chunk.stop)
    report = runner.client.status(job_id)
    assert (report.status, report.succeeded, report.cancelled) == ("succeeded", 8, 0)


def test_an_output_the_storage_refuses_fails_only_that_item(tmp_path: Path) -> None:
    import storage

    settings = embedded_settings(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    runner = EmbeddedRunner(settings)
    real_store = runner.runtime.store

    class Refusing:
        def __init__(self, inner: storage.Store) -> None:
            self.inner = inner

        def write(self, key: str, data: bytes, content_type: str = "") -> str:
            if key.endswith("000002.png"):
                raise storage.AccessDenied(f"access denied writing {key}")
            return self.inner.write(key, data, content_type)

    runner.runtime.store = lambda url: Refusing(real_store(url))  # type: ignore[method-assign,assignment,return-value]
    report = runner.run(JobKind.GENERATE, str(prompts))
    assert (report.status, report.succeeded, report.failed) == ("partial", 2, 1)
    failed = [i for i in _items(settings, report.id) if i.status == "failed"]
    assert [(i.key, i.error_code) for i in failed] == [("000002", "access_denied")]
