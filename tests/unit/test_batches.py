"""Micro-batches on the model: a failing item found by running each alone, out-of-memory halving, image
outputs uploaded on the I/O threads, and items that need no model call left out of it."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from gpu_model import BackendOutOfMemory, CaptionRequest, GenerateRequest
from gpu_model.fake import FakeBackend
from jobs.keys import output_key
from jobs.lifecycle import JobKind
from jobs.state import ClaimedItem
from tests.helpers import embedded_settings
from workers.batches import MicroBatches
from workers.prepare import Prepared
from workers.runtime import WorkerRuntime


class Picky(FakeBackend):
    """Fails a batch holding the image 13 pixels wide; out of memory above `fits` requests."""

    def __init__(self, fits: int = 64) -> None:
        super().__init__()
        self.fits = fits
        self.batches: list[int] = []

    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        self.batches.append(len(requests))
        if len(requests) > self.fits:
            raise BackendOutOfMemory("CUDA out of memory (simulated)")
        if any(r.image.width == 13 for r in requests):
            raise KeyError("a bug in the model code")
        return super().caption(requests)


def _caption(seq: int, width: int = 20) -> Prepared:
    item = ClaimedItem(seq, f"k{seq}", f"s{seq}.png", "", None, attempts=0)
    request = CaptionRequest(
        image=Image.new("RGB", (width, 10)), prompt="Describe.", max_new_tokens=8, seed=seq
    )
    return Prepared(item, request=request, fingerprint=f"print{seq}")


def _batches(tmp_path: Path, backend: FakeBackend, kind: JobKind = JobKind.CAPTION) -> MicroBatches:
    runtime = WorkerRuntime(embedded_settings(tmp_path), backend)
    return MicroBatches(runtime, kind, "job1", str(tmp_path / "outputs"))


def test_a_failing_item_fails_alone(tmp_path: Path) -> None:
    backend = Picky()
    prepared = [_caption(0), _caption(1, width=13), _caption(2), _caption(3)]
    results = _batches(tmp_path, backend).run(prepared)
    assert backend.batches == [4, 1, 1, 1, 1]
    assert sorted(results.outputs) == [0, 2, 3]
    assert results.failures == {1: ("internal_error", "KeyError: 'a bug in the model code'")}
    assert results.fingerprints == {seq: f"print{seq}" for seq in range(4)}


def test_out_of_memory_halves_the_batch_until_it_fits(tmp_path: Path) -> None:
    backend = Picky(fits=2)
    results = _batches(tmp_path, backend).run([_caption(seq) for seq in range(5)])
    assert backend.batches == [5, 2, 3, 1, 2]
    assert sorted(results.outputs) == list(range(5)) and not results.failures

    backend = Picky(fits=0)
    results = _batches(tmp_path, backend).run([_caption(0)])
    assert results.failures[0][0] == "out_of_memory"


def test_items_without_a_request_or_with_a_reused_output_skip_the_model(tmp_path: Path) -> None:
    backend = Picky()
    failed = Prepared(ClaimedItem(1, "k1", "s1", "", None, attempts=0), error=("invalid_image", "truncated"))
    reused = _caption(2)
    reused.reused = "an earlier caption"
    results = _batches(tmp_path, backend).run([_caption(0), failed, reused])
    assert backend.batches == [1]
    assert list(results.outputs) == [0]
    assert results.failures == {1: ("invalid_image", "truncated")}
    assert results.reused == {2: "an earlier caption"}


def test_image_outputs_are_uploaded_on_the_io_threads(tmp_path: Path) -> None:
    batches = _batches(tmp_path, FakeBackend(), JobKind.GENERATE)
    prepared = [
        Prepared(
            ClaimedItem(seq, f"k{seq}", "", "a cat", None, attempts=0),
            request=GenerateRequest(prompt="a cat", width=32, height=16, steps=1, seed=seq, txt_cfg=5.0),
        )
        for seq in range(3)
    ]
    results = batches.run(prepared)
    urls = {seq: output.result() for seq, output in results.outputs.items() if not isinstance(output, str)}
    assert urls == {seq: str(tmp_path / "outputs" / output_key("job1", f"k{seq}", "png")) for seq in range(3)}
    assert all(Image.open(url).size == (32, 16) for url in urls.values())
