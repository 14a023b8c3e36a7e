"""bench/image_breakdown.py: where one image's time goes, on the stand-in model on the CPU."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from gpu_model import BackendOptions, CaptionRequest, EditRequest, GenerateRequest
from gpu_model.ovis_u1 import OvisU1Backend
from tests.bench_scripts import load_bench_script
from tests.fixtures.ovis_u1_standin.build import build_standin, isolated_modules_cache

breakdown = load_bench_script("image_breakdown")


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> OvisU1Backend:
    directory = build_standin(tmp_path_factory.mktemp("ovis-u1") / "Ovis-U1-standin")
    loaded = OvisU1Backend(BackendOptions(model_path=str(directory), device="cpu"))
    with isolated_modules_cache(tmp_path_factory.mktemp("hf-modules")):
        loaded.load()
    return loaded


def _own_attributes(backend: OvisU1Backend) -> list[set[str]]:
    model = backend.model
    generator = model.visual_generator
    return [set(vars(owner)) for owner in (model, generator.backbone, generator.vae)]


def test_each_part_of_a_text_to_image_item_is_counted_and_timed(backend: OvisU1Backend) -> None:
    before = _own_attributes(backend)
    request = GenerateRequest("a red fox in the snow", 96, 64, 3, seed=1, txt_cfg=5.0)

    result = breakdown.image_breakdown(backend, lambda: backend.generate([request]), "cpu")

    # the first item of its size: its own condition and the unconditional one, two DiT passes a step
    assert {part: result[part]["calls"] for part in breakdown.PARTS} == {
        "condition": 2,
        "backbone": 6,
        "vae_encode": 0,
        "vae_decode": 1,
    }
    parts = sum(result[part]["s"] for part in breakdown.PARTS)
    assert all(result[part]["s"] > 0 for part in ("condition", "backbone", "vae_decode"))
    assert result["rest_s"] == pytest.approx(result["total_s"] - parts, abs=1e-3)
    assert 0 < parts <= result["total_s"]
    assert "dit_graphs" not in result  # no CUDA graphs on the CPU
    assert _own_attributes(backend) == before  # every wrapped callable is the model's own again


def test_an_edit_counts_its_source_encode_and_three_passes_a_step(backend: OvisU1Backend) -> None:
    source = Image.new("RGB", (128, 96), (30, 120, 200))
    request = EditRequest(source, "make it red", 2, seed=3, img_cfg=1.5, txt_cfg=6.0)
    backend.edit([request])  # the size's unconditional condition, computed once

    result: dict[str, Any] = breakdown.image_breakdown(backend, lambda: backend.edit([request]), "cpu")

    assert {part: result[part]["calls"] for part in breakdown.PARTS} == {
        "condition": 2,  # the instruction's and the generic prompt's, both on the source
        "backbone": 6,
        "vae_encode": 1,
        "vae_decode": 1,
    }


def test_a_failing_item_leaves_the_model_s_callables_as_they_were(backend: OvisU1Backend) -> None:
    before = _own_attributes(backend)
    request = GenerateRequest("a blue bird", 64, 64, 1, seed=2, txt_cfg=5.0)

    def failing() -> None:
        backend.generate([request])
        raise RuntimeError("the item failed")

    with pytest.raises(RuntimeError, match="the item failed"):
        breakdown.image_breakdown(backend, failing, "cpu")
    assert _own_attributes(backend) == before


def test_a_caption_micro_batch_counts_its_vision_merge_prefill_and_decode(backend: OvisU1Backend) -> None:
    from gpu_model.ovis_u1_pipeline import OvisU1Pipeline

    pipeline = backend._pipeline
    # The CPU backend decodes with the model's own loop: a fast-decoding pipeline over the same model.
    fast = OvisU1Pipeline(backend.model, device="cpu", dtype_name="bfloat16", fast_decode=True)
    backend._pipeline = fast
    try:
        requests = [
            CaptionRequest(image=Image.new("RGB", size, (30, 90, 200)), prompt="What?", max_new_tokens=3)
            for size in [(80, 60), (40, 120), (150, 150)]
        ]
        result = breakdown.caption_breakdown(backend, lambda: backend.caption(requests), "cpu")
    finally:
        backend._pipeline = pipeline
    calls = {part: result[part]["calls"] for part in breakdown.CAPTION_PARTS}
    assert calls["merge_multimodal"] == calls["prefill"] == calls["decoder"] >= 1
    assert calls["visual_tokenizer"] >= 1
    assert result["decoder"]["s"] >= result["prefill"]["s"] > 0
    assert result["total_s"] >= result["decoder"]["s"]
    assert fast.decoder is not None and {"_prefill", "generate"}.isdisjoint(vars(fast.decoder))
    assert "merge_multimodal" not in vars(backend.model)
