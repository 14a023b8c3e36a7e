"""ovis-u1 backend over the stand-in model: loaded by load(), official prompts and parameters, seeds, sizes.

The stand-in (tests/fixtures/ovis_u1_standin) is a tiny random-weight model directory with its own remote
code, loaded through the same from_pretrained(..., trust_remote_code=True) path as the real weights. It
records every call it receives in `model.calls`. Outputs are noise; what reaches the model is real.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_model import (
    BackendError,
    BackendOptions,
    BackendOutOfMemory,
    CaptionRequest,
    EditRequest,
    GenerateRequest,
    create_backend,
)
from gpu_model.ovis_u1 import (
    DEFAULTS,
    EDIT_SIZE_MULTIPLE,
    GENERATE_PREFIX,
    GENERIC_PROMPT,
    InvalidRequest,
    OvisU1Backend,
)
from tests.fixtures.ovis_u1_standin.build import build_standin, isolated_modules_cache
from tests.helpers import sample_photo

RED = (200, 30, 30)


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_standin(tmp_path_factory.mktemp("ovis-u1") / "Ovis-U1-standin")


def _loaded(options: BackendOptions, modules: Path, dtype: str = "bfloat16") -> OvisU1Backend:
    backend = OvisU1Backend(options, dtype=dtype)
    with isolated_modules_cache(modules):
        backend.load()
    return backend


@pytest.fixture(scope="module")
def backend(standin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> OvisU1Backend:
    """Loaded through the registry, as the worker does, in bf16 on the CPU."""
    options = BackendOptions(model_path=str(standin_dir), device="auto", max_batch={"caption": 8})
    created = create_backend("ovis-u1", options)
    assert isinstance(created, OvisU1Backend)
    with isolated_modules_cache(tmp_path_factory.mktemp("hf-modules")):
        created.load()
    return created


@pytest.fixture
def calls(backend: OvisU1Backend) -> Iterator[list[dict[str, Any]]]:
    backend.model.calls.clear()
    yield backend.model.calls


def _of(calls: list[dict[str, Any]], fn: str) -> list[dict[str, Any]]:
    return [c for c in calls if c["fn"] == fn]


@pytest.fixture
def sampled(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What each image's sampling is asked for: the project's loop over the generator's own parts."""
    from gpu_model.ovis_u1_sampling import YakSampler

    records: list[dict[str, Any]] = []
    sample = YakSampler.sample

    def spy(self: YakSampler, cond: Any, no_both: Any, no_txt: Any, **kwargs: Any) -> Image.Image:
        records.append({**kwargs, "batch": len(cond["txt"]), "edit": no_txt is not None})
        return sample(self, cond, no_both, no_txt, **kwargs)

    monkeypatch.setattr(YakSampler, "sample", spy)
    return records


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_load_reports_device_limits_and_official_defaults(backend: OvisU1Backend) -> None:
    info = backend.info
    assert info is not None
    assert info.name == "ovis-u1"
    assert info.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert info.max_batch == {"caption": 8, "generate": 1, "edit": 1}
    assert info.defaults == DEFAULTS
    assert info.defaults["generate"] == {"width": 1024, "height": 1024, "steps": 50, "txt_cfg": 5.0}
    assert info.defaults["edit"] == {"steps": 50, "img_cfg": 1.5, "txt_cfg": 6.0}
    # the stand-in builds its LLM in fp32 whatever from_pretrained asks: load() cast all of it
    assert backend.model.llm.dtype == torch.bfloat16
    assert backend.model.vte.weight.dtype == torch.bfloat16


def test_caption_official_prompt_and_one_generate_call(backend: OvisU1Backend, calls: list[dict]) -> None:
    images = [Image.new("RGB", (80, 60), RED), Image.new("RGBA", (50, 90), (0, 0, 255, 128))]
    requests = [
        CaptionRequest(image=images[0], prompt="What is it?", max_new_tokens=5),
        CaptionRequest(image=images[1], prompt="Describe it.", max_new_tokens=9),
    ]
    captions = backend.caption(requests)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    prompts = _of(calls, "preprocess_inputs")
    assert [p["prompt"] for p in prompts] == ["<image>\nWhat is it?", "<image>\nDescribe it."]
    assert [p["generation_preface"] for p in prompts] == ["", ""]
    assert [p["image_sizes"] for p in prompts] == [[(80, 60)], [(50, 90)]]
    (generate,) = _of(calls, "generate")
    tok = backend.model.get_text_tokenizer()
    assert generate["batch"] == 2
    assert generate["max_new_tokens"] == 9
    assert generate["do_sample"] is False
    assert (
        generate["top_p"]
        is generate["top_k"]
        is generate["temperature"]
        is generate["repetition_penalty"]
        is None
    )
    assert generate["eos_token_id"] == tok.eos_token_id
    assert generate["pad_token_id"] == tok.pad_token_id
    assert generate["use_cache"] is True


def test_batched_captions_equal_batch_of_one(standin_dir: Path, tmp_path: Path) -> None:
    # Compared in fp32: in bf16 the logits of a padded row differ from its unpadded run by rounding, which
    # can flip a near-tie of the random-weight stand-in (it held in bf16 here too, but is not guaranteed).
    backend = _loaded(BackendOptions(model_path=str(standin_dir), device="cpu"), tmp_path, dtype="float32")
    sizes = [(80, 60), (40, 120), (150, 150), (64, 32)]
    colors = [RED, (20, 160, 40), (30, 40, 220), (250, 250, 250)]
    requests = [
        CaptionRequest(image=Image.new("RGB", size, color), prompt=prompt, max_new_tokens=limit)
        for size, color, prompt, limit in zip(
            sizes,
            colors,
            ["What is it?", "Describe the image.", "What color?", "Hi"],
            [12, 3, 8, 12],
            strict=True,
        )
    ]
    batched = backend.caption(requests)
    alone = [backend.caption([r])[0] for r in requests]
    assert batched == alone
    assert len(set(alone)) > 1  # the rows are not all the same text
    # Prepared ahead (the worker's I/O threads): the same inputs, the same captions.
    from gpu_model.ovis_u1_pipeline import CaptionInputs

    prepared = [backend.prepare(r) for r in requests]
    assert all(isinstance(p.prepared, CaptionInputs) for p in prepared)  # type: ignore[union-attr]
    assert backend.caption(prepared) == batched  # type: ignore[arg-type]


def test_a_caption_that_cannot_be_prepared_ahead_is_left_to_the_batch(
    backend: OvisU1Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = CaptionRequest(image=Image.new("RGB", (80, 60), RED), prompt="What is it?", max_new_tokens=2)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("cannot preprocess")

    monkeypatch.setattr(backend.model, "preprocess_inputs", broken)
    assert backend.prepare(request) is request
    generate = GenerateRequest(prompt="a cat", width=64, height=64, steps=1, seed=0, txt_cfg=5.0)
    assert backend.prepare(generate) is generate


def test_sampled_captions_follow_their_seed(backend: OvisU1Backend) -> None:
    image = Image.new("RGB", (80, 60), RED)
    request = CaptionRequest(image=image, prompt="What is it?", max_new_tokens=16, temperature=1.0, seed=3)
    other = CaptionRequest(image=image, prompt="What is it?", max_new_tokens=16, temperature=1.0, seed=4)
    greedy = CaptionRequest(image=image, prompt="What is it?", max_new_tokens=16)
    alone = backend.caption([request])[0]
    batch = backend.caption([other, greedy, request])
    assert batch[2] == alone
    assert batch[0] != alone


def test_max_pixels_reaches_preprocess_inputs_and_a_large_photo_gets_fewer_visual_tokens(
    standin_dir: Path, tmp_path: Path
) -> None:
    # The stand-in with the real model's image bounds (448x448 to 1792x1792 pixels) in place of its tiny ones.
    model_dir = shutil.copytree(standin_dir, tmp_path / "Ovis-U1-real-bounds")
    config = json.loads((model_dir / "config.json").read_text())
    config |= {"image_min_pixels": 448 * 448, "image_max_pixels": 1792 * 1792}
    (model_dir / "config.json").write_text(json.dumps(config))
    backend = _loaded(BackendOptions(model_path=str(model_dir), device="cpu"), tmp_path / "modules")
    photo = sample_photo("astronaut.png", size=None).resize((1280, 960))
    default = CaptionRequest(image=photo, prompt="What is it?", max_new_tokens=2)
    capped = replace(default, max_pixels=448 * 448)
    backend.model.calls.clear()
    prepared = [backend.prepare(default), backend.prepare(capped)]
    assert [c["max_pixels"] for c in _of(backend.model.calls, "preprocess_inputs")] == [None, 448 * 448]
    tokens = []
    for request in prepared:
        assert isinstance(request, CaptionRequest) and request.prepared is not None
        _, _, grid_thws = request.prepared  # type: ignore[misc]
        t, h, w = grid_thws[0].tolist()
        assert h * w * 14 * 14 <= (request.max_pixels or 1792 * 1792)
        tokens.append(t * h * w // 4)
    # 1280x960 is seen at 1288x952 (1,564 visual tokens) uncapped, at 504x364 (234) under 448x448 pixels.
    assert tokens == [1564, 234]
    # The capped caption runs through the model as well, with the cap on the ones prepared on the batch.
    assert len(backend.caption([capped, capped])) == 2
    assert [c["max_pixels"] for c in _of(backend.model.calls, "preprocess_inputs")][2:] == [448 * 448] * 2
    with pytest.raises(InvalidRequest, match=r"max_pixels must be within 200704\.\.3211264, got 1000"):
        backend.caption([replace(default, max_pixels=1000)])


def test_generate_prompts_and_parameters_reach_the_model(
    backend: OvisU1Backend, calls: list[dict], sampled: list[dict]
) -> None:
    requests = [
        GenerateRequest(prompt="a red cat", width=64, height=96, steps=3, seed=11, txt_cfg=4.5),
        GenerateRequest(prompt="a dog", width=112, height=80, steps=2, seed=12, txt_cfg=7.0),
    ]
    images = backend.generate(requests)
    assert [(im.size, im.mode) for im in images] == [((64, 96), "RGB"), ((112, 80), "RGB")]
    assert [(c["width"], c["height"], c["steps"], c["seed"], c["txt_cfg"]) for c in sampled] == [
        (64, 96, 3, 11, 4.5),
        (112, 80, 2, 12, 7.0),
    ]
    assert all(c["img_cfg"] == 0 and c["batch"] == 1 and not c["edit"] for c in sampled)
    prompts = [p["prompt"] for p in _of(calls, "preprocess_inputs")]
    assert prompts == [
        GENERIC_PROMPT,
        GENERATE_PREFIX + "a red cat",
        GENERIC_PROMPT,
        GENERATE_PREFIX + "a dog",
    ]
    assert GENERATE_PREFIX.startswith(
        "<image>\nDescribe the image by detailing the color, shape, size, texture,"
    )
    assert all(p["generation_preface"] is None for p in _of(calls, "preprocess_inputs"))
    # the understanding branch sees the blank image at its smallest size, as the official flow
    vt = backend.model.get_visual_tokenizer()
    small_h, small_w = vt.smart_resize(96, 64, max_pixels=vt.image_processor.min_pixels)
    assert _of(calls, "preprocess_inputs")[1]["image_sizes"] == [(small_w, small_h)]


def test_unconditional_condition_is_computed_once_per_size(backend: OvisU1Backend, calls: list[dict]) -> None:
    def request(prompt: str, width: int) -> GenerateRequest:
        return GenerateRequest(prompt=prompt, width=width, height=128, steps=1, seed=1, txt_cfg=5.0)

    backend.generate([request("a", 144), request("b", 144), request("c", 160)])
    generic = [p for p in _of(calls, "preprocess_inputs") if p["prompt"] == GENERIC_PROMPT]
    assert len(generic) == 2  # one per output size
    backend.generate([request("d", 144)])
    assert len([p for p in _of(calls, "preprocess_inputs") if p["prompt"] == GENERIC_PROMPT]) == 2


def test_generate_seed_gives_the_same_image_alone_and_in_a_batch(backend: OvisU1Backend) -> None:
    def request(prompt: str, seed: int) -> GenerateRequest:
        return GenerateRequest(prompt=prompt, width=64, height=64, steps=2, seed=seed, txt_cfg=5.0)

    alone = backend.generate([request("a red cat", 7)])[0]
    torch.rand(100)  # the global RNG state does not matter
    batch = backend.generate([request("a blue dog", 8), request("a red cat", 7), request("a red cat", 9)])
    assert np.array_equal(_pixels(batch[1]), _pixels(alone))
    assert not np.array_equal(_pixels(batch[2]), _pixels(alone))  # same prompt, another seed


def test_edit_prompts_and_parameters_reach_the_model(
    backend: OvisU1Backend, calls: list[dict], sampled: list[dict]
) -> None:
    source = Image.new("RGB", (200, 100), RED)
    request = EditRequest(
        image=source, instruction="  make it blue \n", steps=3, seed=5, img_cfg=1.2, txt_cfg=6.5
    )
    (edited,) = backend.edit([request])
    assert (edited.size, edited.mode) == ((192, 96), "RGB")
    assert sampled == [
        {
            "height": 96,
            "width": 192,
            "steps": 3,
            "seed": 5,
            "img_cfg": 1.2,
            "txt_cfg": 6.5,
            "batch": 1,
            "edit": True,
        }
    ]
    assert _of(calls, "generate_img") == []  # the project's loop, not the model's own
    prompts = _of(calls, "preprocess_inputs")
    # no-both (blank image), no-text (generic prompt + source), full (instruction + source)
    assert [p["prompt"] for p in prompts] == [GENERIC_PROMPT, GENERIC_PROMPT, "<image>\nmake it blue"]
    assert all(p["generation_preface"] is None for p in prompts)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((200, 100), (192, 96)), ((100, 300), (96, 288)), ((96, 160), (96, 160))],
)
def test_edit_output_follows_the_input_aspect_ratio(
    backend: OvisU1Backend, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    source = Image.new("L", size, 120)  # not RGB: converted on the way in
    (edited,) = backend.edit(
        [EditRequest(image=source, instruction="x", steps=1, seed=1, img_cfg=1.5, txt_cfg=6.0)]
    )
    assert edited.size == expected
    assert edited.mode == "RGB"
    assert all(side % EDIT_SIZE_MULTIPLE == 0 for side in edited.size)


def test_edit_size_of_a_large_input_is_about_one_megapixel(backend: OvisU1Backend) -> None:
    assert backend._pipeline is not None
    height, width = backend._pipeline.edit_size(4000, 3000)
    assert height % 32 == 0 and width % 32 == 0
    assert 0.8e6 < height * width <= 28 * 28 * 1280
    assert abs(width / height - 4 / 3) < 0.05


def test_edit_seed_is_reproducible_whatever_the_global_rng(backend: OvisU1Backend) -> None:
    source = Image.new("RGB", (96, 64), (30, 120, 200))

    def request(seed: int) -> EditRequest:
        return EditRequest(
            image=source, instruction="make it red", steps=2, seed=seed, img_cfg=1.5, txt_cfg=6.0
        )

    alone = backend.edit([request(3)])[0]
    torch.rand(1000)  # the VAE encode samples the global RNG: the backend seeds it per item
    batch = backend.edit([request(4), request(3)])
    assert np.array_equal(_pixels(batch[1]), _pixels(alone))
    assert not np.array_equal(_pixels(batch[0]), _pixels(alone))


def test_invalid_request_fails_before_the_model(backend: OvisU1Backend, calls: list[dict]) -> None:
    with pytest.raises(InvalidRequest, match="multiple of 16"):
        backend.generate(
            [GenerateRequest(prompt="a cat", width=100, height=64, steps=2, seed=1, txt_cfg=5.0)]
        )
    assert calls == []
    assert backend.generate([]) == []


def test_cuda_out_of_memory_becomes_backend_out_of_memory(
    backend: OvisU1Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(backend.model, "generate", out_of_memory)
    image = Image.new("RGB", (64, 64), RED)
    with pytest.raises(BackendOutOfMemory, match="caption micro-batch of 2"):
        backend.caption([CaptionRequest(image=image, prompt="What?", max_new_tokens=4)] * 2)


def test_warmup_runs_a_caption_and_leaves_the_generator_to_its_first_use(
    backend: OvisU1Backend, calls: list[dict]
) -> None:
    backend.warmup()
    assert {c["fn"] for c in calls} == {"preprocess_inputs", "generate"}

    calls.clear()
    backend.warmup({"generate", "edit"})
    assert calls == []


def test_unloaded_backend_refuses_work() -> None:
    backend = OvisU1Backend(BackendOptions(model_path="/nowhere"))
    with pytest.raises(BackendError, match="not loaded"):
        backend.caption([CaptionRequest(image=Image.new("RGB", (8, 8)), prompt="?", max_new_tokens=1)])


def test_loads_a_hub_id_from_the_local_cache(
    standin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--AIDC-AI--Ovis-U1-3B"
    shutil.copytree(standin_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    options = BackendOptions(model_path="AIDC-AI/Ovis-U1-3B", revision=commit, device="cpu")
    backend = _loaded(options, tmp_path / "modules")
    assert backend.info is not None and backend.info.device == "cpu"
    caption = backend.caption(
        [CaptionRequest(image=Image.new("RGB", (64, 64)), prompt="?", max_new_tokens=3)]
    )
    assert len(caption) == 1


def test_fast_greedy_decoder_gives_the_official_captions(standin_dir: Path, tmp_path: Path) -> None:
    # The fast decoder replaces only the LLM's decode loop under the model's own generate(): same prompts,
    # same multimodal merge, same tokens (fp32; on CUDA it also captures each step in a CUDA graph).
    from gpu_model.ovis_u1_pipeline import OvisU1Pipeline

    backend = _loaded(BackendOptions(model_path=str(standin_dir), device="cpu"), tmp_path, dtype="float32")
    official = backend.caption(
        requests := [
            CaptionRequest(image=Image.new("RGB", size, color), prompt=prompt, max_new_tokens=limit)
            for size, color, prompt, limit in [
                ((80, 60), RED, "What is it?", 12),
                ((40, 120), (20, 160, 40), "Describe the image.", 3),
                ((150, 150), (30, 40, 220), "What color?", 9),
            ]
        ]
    )
    fast = OvisU1Pipeline(backend.model, device="cpu", dtype_name="float32", fast_decode=True)
    assert fast.decoder is not None
    used: list[int] = []
    decode = fast.decoder.generate
    fast.decoder.generate = lambda *a, **k: used.append(len(a[0])) or decode(*a, **k)  # type: ignore[method-assign]
    assert fast.caption(requests) == official
    assert used == [3]  # one batched decode for the three captions
    assert "generate" not in vars(backend.model.llm)  # the LLM's own generate is back


@pytest.mark.cuda
def test_generator_passes_from_cuda_graphs_equal_plain_passes(standin_dir: Path, tmp_path: Path) -> None:
    backend = _loaded(BackendOptions(model_path=str(standin_dir), device="cuda"), tmp_path)
    pipeline = backend._pipeline
    assert pipeline is not None and pipeline.dit_graphs is not None
    requests: list[Any] = [
        GenerateRequest(prompt="a red cat", width=64, height=64, steps=3, seed=7, txt_cfg=5.0),
        EditRequest(Image.new("RGB", (64, 64), RED), "make it blue", 3, seed=2, img_cfg=1.5, txt_cfg=6.0),
    ]
    graphed = [backend.generate(requests[:1])[0], backend.edit(requests[1:])[0]]
    assert pipeline.dit_graphs.replays > 0, vars(pipeline.dit_graphs)
    del backend.model.visual_generator.backbone.forward  # the module's own forward again
    plain = [backend.generate(requests[:1])[0], backend.edit(requests[1:])[0]]
    diffs = [int(np.abs(_pixels(a) - _pixels(b)).max()) for a, b in zip(graphed, plain, strict=True)]
    # The same kernels; cuBLAS may pick another algorithm inside a capture: bf16 rounding apart at most.
    assert max(diffs) <= 8, diffs


def test_generator_blocks_are_the_backbones_repeated_blocks(backend: OvisU1Backend) -> None:
    from gpu_model.ovis_u1_pipeline import generator_blocks

    blocks = generator_blocks(backend.model)
    assert blocks and all(
        b is m for b, m in zip(blocks, backend.model.visual_generator.backbone.blocks, strict=True)
    )
    assert generator_blocks(object()) == []
