"""A caption's pixel cap (`max_pixels`), per job and per manifest item: checked at submit, carried to the
backend in each request and recorded in every row's provenance (embedded mode: SQLite, local storage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpu_model import CaptionRequest
from gpu_model.fake import FakeBackend
from jobs.errors import InvalidParameters, InvalidSource
from jobs.lifecycle import JobKind
from tests.helpers import embedded_settings, write_photos
from workers.embedded import EmbeddedRunner


class _Recording(FakeBackend):
    """The fake backend, noting the cap each caption request carried, by its prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.caps: dict[str, int | None] = {}

    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        self.caps.update({r.prompt: r.max_pixels for r in requests})
        return super().caption(requests)


def _manifest(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_job_cap_an_items_own_and_an_items_0_reach_the_model_and_its_provenance(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "img", count=3)
    rows: list[dict[str, object]] = [
        {"id": "job", "image": "img/photo000.jpg", "prompt": "job"},
        {"id": "own", "image": "img/photo001.jpg", "prompt": "own", "max_pixels": 802816},
        {"id": "model", "image": "img/photo002.jpg", "prompt": "model", "max_pixels": 0},
    ]
    backend = _Recording()
    report = EmbeddedRunner(settings, backend).run(
        JobKind.CAPTION, str(_manifest(tmp_path / "m.jsonl", rows)), params={"max_pixels": 401408}
    )
    assert report.succeeded == 3
    # An item's 0 undoes the job's cap: the model's own bound (None) holds for it.
    assert backend.caps == {"job": 401408, "own": 802816, "model": None}
    results = tmp_path / "outputs" / report.id / "results.jsonl"
    made = {row["id"]: row["max_pixels"] for row in map(json.loads, results.read_text().splitlines())}
    assert made == {"job": 401408, "own": 802816, "model": None}


def test_no_cap_leaves_the_models_own_bound(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "in", count=2)
    backend = _Recording()
    report = EmbeddedRunner(settings, backend).run(JobKind.CAPTION, str(tmp_path / "in"))
    assert report.succeeded == 2 and set(backend.caps.values()) == {None}


def test_a_cap_outside_the_models_bounds_is_refused_at_submit_naming_the_item(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "img", count=2)
    runner = EmbeddedRunner(settings)
    rows: list[dict[str, object]] = [
        {"id": "fine", "image": "img/photo000.jpg", "max_pixels": "401408"},
        {"id": "tiny", "image": "img/photo001.jpg", "max_pixels": 1000},
    ]
    with pytest.raises(InvalidParameters, match=r"item 'tiny': max_pixels: .* within 200704\.\.3211264"):
        runner.client.submit(JobKind.CAPTION, str(_manifest(tmp_path / "m.jsonl", rows)))
    with pytest.raises(InvalidParameters, match=r"max_pixels: .*got 4000000"):
        runner.client.submit(JobKind.CAPTION, str(tmp_path / "img"), params={"max_pixels": 4000000})
    prompts = _manifest(tmp_path / "p.jsonl", [{"prompt": "a cat", "max_pixels": 401408}])
    with pytest.raises(InvalidSource, match="'max_pixels' is a per-item parameter of caption jobs"):
        runner.client.submit(JobKind.GENERATE, str(prompts))
    assert runner.client.list() == []
