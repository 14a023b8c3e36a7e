"""The `ovis-u1-shaped` benchmark backend at tiny shapes on the CPU, and its size at full shapes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from gpu_model import BackendOptions, CaptionRequest, EditRequest, GenerateRequest, create_backend
from gpu_model.shaped import ShapedBackend, edit_size
from gpu_model.shaped_compute import measure_stand_in


@pytest.fixture(scope="module")
def backend() -> ShapedBackend:
    made = create_backend("ovis-u1-shaped", BackendOptions(device="cpu", max_batch={"caption": 4}))
    assert isinstance(made, ShapedBackend)
    made.load()
    return made


def _photo(width: int, height: int, shade: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (shade, 255 - shade, 90))
    image.paste((20, 20, shade), (width // 4, height // 4, width // 2, height // 2))
    return image


def test_loads_tiny_on_the_cpu(backend: ShapedBackend) -> None:
    info = backend.load()
    assert (info.name, info.device, backend.scale) == ("ovis-u1-shaped", "cpu", "tiny")
    assert info.max_batch == {"caption": 4, "generate": 8, "edit": 4}
    assert info.defaults["generate"]["width"] == 64


def test_captions_of_a_batch_equal_the_official_one_at_a_time(backend: ShapedBackend) -> None:
    requests = [
        CaptionRequest(_photo(64 + 8 * k, 48, 40 * k), "What is in it?", max_new_tokens=limit)
        for k, limit in enumerate([12, 5, 9, 12, 3])
    ]
    official = ShapedBackend(BackendOptions(device="cpu"), fast=False)
    official.load()
    fast_tokens = backend.caption_tokens(requests[:4])
    official_tokens = official.caption_tokens(requests[:4])
    assert fast_tokens.tolist() == official_tokens.tolist()
    captions = backend.caption(requests)  # 5 rows: two micro-batches of the decoder
    assert len(captions) == 5 and all(isinstance(c, str) for c in captions)
    assert captions[:4] == official.caption(requests[:4])


def test_images_reproduce_their_seed_whatever_the_batch(backend: ShapedBackend) -> None:
    first = GenerateRequest("a red fox", 80, 64, steps=2, seed=7, txt_cfg=5.0)
    second = GenerateRequest("a blue boat on a lake", 64, 64, steps=2, seed=8, txt_cfg=5.0)
    alone = backend.generate([first])[0]
    together = backend.generate([second, first])
    assert alone.size == (80, 64) and alone.mode == "RGB"
    assert together[1].tobytes() == alone.tobytes()
    assert together[0].tobytes() != alone.tobytes()


def test_edit_keeps_the_aspect_and_reproduces(backend: ShapedBackend) -> None:
    request = EditRequest(_photo(96, 64, 200), "make it red", steps=2, seed=3, img_cfg=1.5, txt_cfg=6.0)
    out = backend.edit([request, request])
    assert out[0].size == edit_size(96, 64) == (96, 64)
    assert out[0].tobytes() == out[1].tobytes()


def test_requests_outside_the_limits_fail_before_any_work(backend: ShapedBackend) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        backend.generate([GenerateRequest("x", 60, 64, steps=2, seed=0, txt_cfg=5.0)])
    with pytest.raises(ValueError, match="max_new_tokens"):
        backend.caption([CaptionRequest(_photo(32, 32, 9), "x", max_new_tokens=0)])


def test_edit_size_follows_the_official_rule() -> None:
    assert edit_size(1024, 1024) == (992, 992)
    assert edit_size(1280, 720) == (1280, 704)


def test_full_size_stand_in_costs_what_the_real_model_costs() -> None:
    """Parameters within 2% of the reference's, FLOPs of every part within 1% of the real architecture's."""
    census = measure_stand_in()
    for part, reference in census["params_reference"].items():
        assert census["params_stand_in"][part] == pytest.approx(reference, rel=0.02), part
    for part, real in census["flops_real"].items():
        assert census["flops_stand_in"][part] == pytest.approx(real, rel=0.01), part


def test_captions_prepared_ahead_equal_those_prepared_in_the_batch(backend: ShapedBackend) -> None:
    requests = [
        CaptionRequest(_photo(70, 50, 30), "What is in it?", max_new_tokens=6),
        CaptionRequest(_photo(56, 56, 160).convert("L"), "What is in it?", max_new_tokens=6),
    ]
    prepared = [backend.prepare(r) for r in requests]
    side = backend.parts.cfg.image_size
    assert all(p.prepared is not None and p.prepared.shape == (side, side, 3) for p in prepared)  # type: ignore[union-attr]
    assert backend.caption(prepared) == backend.caption(requests)
    edit = EditRequest(_photo(64, 64, 9), "make it red", steps=1, seed=0, img_cfg=1.5, txt_cfg=6.0)
    assert backend.prepare(edit) is edit


@pytest.mark.cuda
def test_dit_passes_from_cuda_graphs_equal_plain_passes() -> None:
    gpu = ShapedBackend(BackendOptions(device="cuda"), scale="tiny")
    gpu.load()
    assert gpu.dit_graphs is not None
    requests = [
        GenerateRequest("a red fox", 64, 64, steps=3, seed=7, txt_cfg=5.0),
        EditRequest(_photo(64, 64, 90), "make it red", steps=3, seed=3, img_cfg=1.5, txt_cfg=6.0),
    ]
    graphed = [gpu.generate([requests[0]])[0], gpu.edit([requests[1]])[0]]  # type: ignore[list-item]
    # Signatures: the prompt's pass, the shared unconditional one, the edit's passes with the source latents.
    assert gpu.dit_graphs.captures >= 3 and gpu.dit_graphs.replays > 0
    assert not gpu.dit_graphs._refused
    gpu.dit_graphs = None
    plain = [gpu.generate([requests[0]])[0], gpu.edit([requests[1]])[0]]  # type: ignore[list-item]
    # Replays run the same kernels; cuBLAS may pick another algorithm inside a capture (its own workspace),
    # which moves bf16 results by rounding only.
    diffs = [_max_diff(a, b) for a, b in zip(graphed, plain, strict=True)]
    assert max(diffs) <= 8, diffs


def _max_diff(a: Image.Image, b: Image.Image) -> int:
    import numpy as np

    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.mark.cuda
def test_images_are_queued_without_waiting_for_the_gpu() -> None:
    gpu = ShapedBackend(BackendOptions(device="cuda"), scale="tiny")
    gpu.load()
    generate = GenerateRequest("a red fox", 64, 64, steps=3, seed=7, txt_cfg=5.0)
    edit = EditRequest(_photo(64, 64, 90), "make it red", steps=3, seed=3, img_cfg=1.5, txt_cfg=6.0)
    first = [gpu.generate([generate])[0], gpu.edit([edit])[0]]  # compiles and captures
    # Queuing an item must not wait for the GPU: any host sync raises here.
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            queued = [gpu._generate_one(generate), gpu._edit_one(edit)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    again = [image.image() for image in queued]
    assert [_max_diff(a, b) for a, b in zip(first, again, strict=True)] == [0, 0]


@pytest.mark.cuda
def test_pinned_staging_uploads_what_it_is_given_batch_after_batch() -> None:
    import numpy as np

    from gpu_model.shaped_transfer import PinnedStaging

    staging = PinnedStaging()
    rng = np.random.default_rng(0)
    for count in (3, 2, 5, 5):  # a smaller batch reuses the buffer, a larger one replaces it
        arrays = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(count)]
        batch = staging.upload(arrays, torch.device("cuda"))
        assert torch.equal(batch.cpu(), torch.from_numpy(np.stack(arrays)))


def test_a_pixel_cap_leaves_the_fixed_vision_input_as_it_is(backend: ShapedBackend) -> None:
    # The tower sees every image at its one side (448 at full size): the floor of any cap a request may set.
    request = CaptionRequest(_photo(300, 200, 70), "What is in it?", max_new_tokens=6)
    capped = CaptionRequest(request.image, request.prompt, request.max_new_tokens, max_pixels=448 * 448)
    side = backend.parts.cfg.image_size
    assert backend.prepare(capped).prepared.shape == (side, side, 3)  # type: ignore[union-attr]
    assert backend.caption([capped]) == backend.caption([request])
