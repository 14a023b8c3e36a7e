"""Preparing inputs: requests built from the backend's defaults, the job's parameters and the item's own, each
with a fingerprint; bad input ends its item with one WARNING line; a transient fault is raised."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import storage
from gpu_model import CaptionRequest
from jobs import errors
from jobs.lifecycle import JobKind
from jobs.state import ClaimedItem
from tests.helpers import embedded_settings, write_photos
from workers import prepare
from workers.prepare import Inputs
from workers.runtime import WorkerRuntime


def _inputs(tmp_path: Path) -> Inputs:
    runtime = WorkerRuntime(embedded_settings(tmp_path))
    params = {"max_new_tokens": 12, "seed": 7}
    return Inputs(runtime, JobKind.CAPTION, "job1", params=params, output_url="out", reuse_outputs=False)


def _item(seq: int, source: Path, text: str = "", params: dict[str, int] | None = None) -> ClaimedItem:
    return ClaimedItem(seq, f"k{seq}", str(source), text, params, attempts=0)


def test_requests_take_the_job_and_item_parameters_and_bad_input_fails_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    [photo] = write_photos(tmp_path / "in", count=1, size=48)
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(photo.read_bytes()[:200])
    items = [
        _item(0, photo),
        _item(1, photo, "What is it?", {"max_new_tokens": 3, "seed": 1}),
        _item(2, broken),
    ]
    with caplog.at_level(logging.WARNING, logger="workers.prepare"):
        first, second, bad = _inputs(tmp_path).prepare_group(items)
    assert isinstance(first.request, CaptionRequest) and isinstance(second.request, CaptionRequest)
    assert (first.request.prompt, first.request.max_new_tokens) == ("Describe this image in detail.", 12)
    assert (second.request.prompt, second.request.max_new_tokens, second.request.seed) == (
        "What is it?",
        3,
        1,
    )
    assert first.fingerprint and second.fingerprint and first.fingerprint != second.fingerprint
    assert (bad.request, bad.fingerprint, bad.error and bad.error[0]) == (None, None, "invalid_image")
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING and warning.exc_info is None and "k2" in warning.getMessage()


def test_a_transient_fault_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [photo] = write_photos(tmp_path / "in", count=1, size=48)

    def unavailable(url: str, *_: object) -> bytes:
        raise storage.StorageUnavailable(f"{url}: connection reset (simulated)")

    monkeypatch.setattr(prepare, "read_allowed_input", unavailable)
    with pytest.raises(errors.StorageUnavailable):
        _inputs(tmp_path).prepare_group([_item(0, photo)])
