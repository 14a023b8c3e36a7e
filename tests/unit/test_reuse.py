"""`--skip-existing` reuses an earlier output only where it is the output this item would get: the same input
bytes, prompt, parameters, seed, model and output location (embedded mode: SQLite, local storage)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import select

from gpu_model import CaptionRequest
from jobs.db import session_scope
from jobs.lifecycle import JobKind
from jobs.models import Item
from jobs.settings import Settings
from tests.helpers import embedded_settings, write_photos
from workers.embedded import EmbeddedRunner
from workers.reuse import fingerprint


def _run(
    settings: Settings, kind: JobKind, source: Path, skip: bool = True, **params: Any
) -> tuple[Any, dict[str, str]]:
    report = EmbeddedRunner(settings).run(kind, str(source), params=params, skip_existing=skip)
    with session_scope(settings.resolved_database_url) as session:
        rows = session.execute(select(Item.key, Item.output).where(Item.job_id == report.id)).all()
    return report, {key: str(output) for key, output in rows}


def _prompts(path: Path, prompts: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": key, "prompt": text}) + "\n" for key, text in prompts.items()))
    return path


def test_captions_are_reused_only_for_the_same_bytes_and_the_same_prompt(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, chunk_size=2)
    photos = write_photos(tmp_path / "in", count=4)
    first, made = _run(settings, JobKind.CAPTION, tmp_path / "in", skip=False)
    assert first.succeeded == 4

    photos[0].write_bytes(photos[1].read_bytes())  # same name, another picture
    again, kept = _run(settings, JobKind.CAPTION, tmp_path / "in")
    assert (again.succeeded, again.skipped) == (4, 3)
    assert kept["photo000.jpg"] == made["photo001.jpg"] != made["photo000.jpg"]
    assert all(kept[key] == made[key] for key in made if key != "photo000.jpg")

    asked, _ = _run(settings, JobKind.CAPTION, tmp_path / "in", prompt="What is in the picture?")
    assert asked.skipped == 0  # another question: nothing made for the default one is reused
    shorter, _ = _run(settings, JobKind.CAPTION, tmp_path / "in", max_new_tokens=7)
    assert shorter.skipped == 0


def test_images_are_reused_only_for_the_same_prompt_size_seed_and_while_they_exist(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, chunk_size=2)
    manifest = _prompts(tmp_path / "p.jsonl", {"a": "a red car", "b": "a blue boat", "c": "a green tree"})
    first, made = _run(settings, JobKind.GENERATE, manifest, skip=False, width=64, height=64)
    assert first.succeeded == 3

    bigger, _ = _run(settings, JobKind.GENERATE, manifest, width=128, height=64)
    assert bigger.skipped == 0
    reseeded, _ = _run(settings, JobKind.GENERATE, manifest, width=64, height=64, seed=7)
    assert reseeded.skipped == 0
    _prompts(manifest, {"a": "a red car", "b": "a blue boat at night", "c": "a green tree"})
    Path(made["c"]).unlink()  # an output deleted from storage since
    again, kept = _run(settings, JobKind.GENERATE, manifest, width=64, height=64)
    assert (again.succeeded, again.skipped) == (3, 1)
    assert kept["a"] == made["a"]  # the same prompt, size and seed: the file made by the first job
    assert kept["b"] != made["b"] and kept["c"] != made["c"] and Path(kept["c"]).exists()


def test_another_model_reuses_nothing(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "in", count=2)
    _run(settings, JobKind.CAPTION, tmp_path / "in", skip=False)
    other = settings.model_copy(update={"model_revision": "0123abc"})
    report, _ = _run(other, JobKind.CAPTION, tmp_path / "in")
    assert report.skipped == 0


def test_captions_under_another_pixel_cap_are_computed_again(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, chunk_size=2)
    write_photos(tmp_path / "in", count=2)
    _run(settings, JobKind.CAPTION, tmp_path / "in", skip=False)
    capped, _ = _run(settings, JobKind.CAPTION, tmp_path / "in", max_pixels=401408)
    assert capped.skipped == 0  # the model saw the images smaller: nothing made at its own bound is reused
    same, _ = _run(settings, JobKind.CAPTION, tmp_path / "in", max_pixels=401408)
    assert same.skipped == 2
    other, _ = _run(settings, JobKind.CAPTION, tmp_path / "in", max_pixels=802816)
    assert other.skipped == 0
    unset, _ = _run(settings, JobKind.CAPTION, tmp_path / "in", max_pixels=0)
    assert unset.skipped == 2  # 0 is the model's own bound, as in the first job


def test_an_unset_pixel_cap_keeps_the_fingerprints_of_captions_made_before_it_existed() -> None:
    request = CaptionRequest(image=Image.new("RGB", (4, 4)), prompt="What is it?", max_new_tokens=8, seed=3)
    # What the fingerprint of this caption was before requests had max_pixels.
    before = {
        "kind": "caption",
        "input": "d1",
        "request": {"prompt": "What is it?", "max_new_tokens": 8, "temperature": 0.0, "seed": 3},
        "model": "fake|m@|ovis-batch 1",
        "output": "s3://b/out",
        "encoding": [None, None],
    }
    text = json.dumps(before, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    where = {
        "kind": "caption",
        "input_digest": "d1",
        "model": "fake|m@|ovis-batch 1",
        "output_url": "s3://b/out",
    }
    assert fingerprint(request=request, **where) == hashlib.sha256(text.encode()).hexdigest()
    capped = fingerprint(request=replace(request, max_pixels=401408), **where)
    assert capped != fingerprint(request=request, **where)
    assert capped != fingerprint(request=replace(request, max_pixels=802816), **where)
