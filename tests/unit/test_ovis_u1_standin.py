"""The Ovis-U1 stand-in behaves as the real remote code was observed to (reference/ovis-u1.md).

The backend's handling (explicit .to(dtype), one generate_img per item, global seeding for edits, a CPU
autocast, a real image with every prompt) only means something if the stand-in has the same quirks.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.ovis_u1_standin.build import build_standin, isolated_modules_cache

# the stand-in's VAE decode asks the CPU for an fp32 autocast, which it refuses with this warning
pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_standin(tmp_path_factory.mktemp("standin") / "Ovis-U1-standin")


def _from_pretrained(model_dir: Path, modules: Path) -> Any:
    """As the official scripts call it, before their explicit .to(bfloat16)."""
    from transformers import AutoModelForCausalLM

    with isolated_modules_cache(modules):
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, torch_dtype=torch.bfloat16, trust_remote_code=True, local_files_only=True
        )
    return model.eval()


@pytest.fixture(scope="module")
def raw_model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Cast as the backend's load() does on the CPU: everything bf16, the VAE fp32."""
    model = _from_pretrained(model_dir, tmp_path_factory.mktemp("hf-modules")).to(torch.bfloat16)
    model.visual_generator.vae.float()
    return model


def _inputs(model: Any, prompt: str, image: Image.Image | None, preface: str | None = "") -> dict[str, Any]:
    _, ids, pixel_values, grid_thws = model.preprocess_inputs(
        prompt, [image] if image else [], generation_preface=preface
    )
    tok = model.get_text_tokenizer()
    return {
        "input_ids": ids.unsqueeze(0),
        "attention_mask": (ids != tok.pad_token_id).unsqueeze(0),
        "pixel_values": None if pixel_values is None else pixel_values.to(model.vte.weight.dtype),
        "grid_thws": grid_thws,
    }


def _generate(model: Any, inputs: dict[str, Any], **kwargs: Any) -> Any:
    """generate() as the official scripts call it: the ids positional, the rest by keyword."""
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    return model.generate(inputs["input_ids"], **rest, **kwargs)


def test_llm_keeps_its_sub_config_dtype_until_cast(model_dir: Path, tmp_path: Path) -> None:
    model = _from_pretrained(model_dir, tmp_path)
    assert model.llm.dtype == torch.float32  # from_pretrained(torch_dtype=bf16) did not reach it
    assert model.vte.weight.dtype == torch.bfloat16
    inputs = _inputs(model, "<image>\nWhat is it?", Image.new("RGB", (64, 64)))
    with pytest.raises(RuntimeError, match="dtype"):
        _generate(model, inputs, max_new_tokens=2)
    model.to(torch.bfloat16)  # what load() does
    assert _generate(model, inputs, max_new_tokens=2).shape[0] == 1


def test_preprocess_inputs_returns_placeholders_patches_and_grid(raw_model: Any) -> None:
    prompt, ids, pixel_values, grid_thws = raw_model.preprocess_inputs(
        "<image>\nWhat is it?",
        [Image.new("RGB", (100, 60))],
        generation_preface="",
        return_labels=False,
        propagate_exception=False,
        multimodal_type="single_image",
        fix_sample_overall_length_navit=False,
    )
    assert ids.dtype == torch.int64 and ids.dim() == 1
    assert pixel_values.dtype == torch.float32 and pixel_values.shape[1] == 588
    assert grid_thws.dtype == torch.int64 and grid_thws.shape == (1, 3)
    t, h, w = grid_thws[0].tolist()
    assert pixel_values.shape[0] == t * h * w
    assert int((ids == -300).sum()) == t * h * w // 4
    assert int((ids == -301).sum()) == int((ids == -302).sum()) == 1
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    prompt, *_ = raw_model.preprocess_inputs(
        "<image>\nx", [Image.new("RGB", (64, 64))], generation_preface=None
    )
    assert prompt.endswith("x<|im_end|>\n")


def test_preprocess_inputs_resizes_within_min_pixels_and_max_pixels(raw_model: Any) -> None:
    def seen(image: Image.Image, **bounds: int) -> tuple[int, int]:
        *_, grid_thws = raw_model.preprocess_inputs("<image>\nx", [image], **bounds)
        _, h, w = grid_thws[0].tolist()
        return h * 14, w * 14

    photo = Image.new("RGB", (400, 300))
    limit = raw_model.get_visual_tokenizer().image_processor.max_pixels
    height, width = seen(photo)
    assert height * width <= limit < 400 * 300  # the image processor's own bound
    assert seen(photo, max_pixels=448 * 448) == (308, 392)  # a higher cap: the image at its own size, in 28s
    height, width = seen(photo, max_pixels=2 * 28 * 28)
    assert height * width <= 2 * 28 * 28  # a cap below the floor lowers the floor, as the real code does
    assert seen(Image.new("RGB", (20, 20)), min_pixels=56 * 56 * 4) == (112, 112)


def test_text_only_sample_fails(raw_model: Any) -> None:
    inputs = _inputs(raw_model, "What is it?", None)
    with pytest.raises(AttributeError):
        _generate(raw_model, inputs, max_new_tokens=2)


def test_generate_returns_new_tokens_only(raw_model: Any) -> None:
    inputs = _inputs(raw_model, "<image>\nWhat is it?", Image.new("RGB", (64, 64)))
    out = _generate(raw_model, inputs, max_new_tokens=5, do_sample=False)
    assert out.dtype == torch.int64 and out.shape[0] == 1 and 1 <= out.shape[1] <= 5


def _t2i(model: Any, prompts: list[str], seed: int, autocast: bool = True) -> list[Image.Image]:
    kwargs = {"height": 64, "width": 64, "num_steps": 2, "seed": seed, "txt_cfg": 5.0}
    blank = Image.new("RGB", (64, 64), (255, 255, 255))
    conds = [model.generate_condition(**_inputs(model, p, blank, None), **kwargs) for p in prompts]
    cond = {"txt": torch.cat([c["txt"] for c in conds])}  # same length: the prompts below are equal
    no_both = model.generate_condition(**_inputs(model, "<image>\nGenerate an image.", blank, None), **kwargs)
    no_both = {"txt": no_both["txt"].expand(len(prompts), -1, -1)}
    context = torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        images: list[Image.Image] = model.generate_img(
            cond=cond, no_both_cond=no_both, no_txt_cond=None, **kwargs
        )
    return images


def test_generate_condition_concatenates_two_hidden_layers(raw_model: Any) -> None:
    inputs = _inputs(raw_model, "<image>\nGenerate an image.", Image.new("RGB", (64, 64)), None)
    cond = raw_model.generate_condition(**inputs, height=64, width=64, num_steps=2, seed=1, img_cfg=0)
    hidden = raw_model.config.llm_config.hidden_size
    assert set(cond) == {"txt"}
    assert cond["txt"].shape == (1, inputs["input_ids"].shape[1], 2 * hidden)
    # the last hidden layer (after the final norm) first, then the one before, as the real code
    merged = raw_model.merge_multimodal(
        text_input_ids=inputs["input_ids"],
        text_attention_masks=inputs["attention_mask"],
        text_labels=None,
        pixel_values=inputs["pixel_values"],
        grid_thws=inputs["grid_thws"],
        left_padding=True,
    )
    assert len(merged) == 5
    states = raw_model.llm.model(inputs_embeds=merged[1], output_hidden_states=True).hidden_states
    assert torch.equal(cond["txt"][..., :hidden], states[-1])
    assert torch.equal(cond["txt"][..., hidden:], states[-2])
    assert not torch.equal(states[-1], states[-2])


def test_batched_generate_img_draws_the_batch_noise_from_one_generator(raw_model: Any) -> None:
    prompt = "<image>\nDescribe: a cat"
    single = _t2i(raw_model, [prompt], seed=5)
    batch = _t2i(raw_model, [prompt, prompt], seed=5)
    assert len(batch) == 2 and all(im.mode == "RGB" and im.size == (64, 64) for im in batch)
    assert np.array_equal(np.asarray(batch[0]), np.asarray(single[0]))
    assert not np.array_equal(np.asarray(batch[1]), np.asarray(single[0]))  # row 1 is not its own seed


def test_generate_img_defaults_and_modes(raw_model: Any) -> None:
    raw_model.calls.clear()
    _t2i(raw_model, ["<image>\nx"], seed=1)
    record = raw_model.calls[-1]
    assert record["fn"] == "generate_img" and record["edit"] is False
    assert record["img_cfg"] == 1.5  # popped with its default: the caller did not pass it


def test_edit_vae_encode_samples_the_global_rng(raw_model: Any) -> None:
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    kwargs = {"height": 64, "width": 64, "num_steps": 2, "seed": 3, "img_cfg": 1.5, "txt_cfg": 6.0}
    pil, vae_pixels, _ = raw_model.visual_generator.process_image_aspectratio(source, (64, 64))
    cond = raw_model.generate_condition(**_inputs(raw_model, "<image>\nmake it blue", pil, None), **kwargs)
    cond["vae_pixel_values"] = vae_pixels.unsqueeze(0)
    no_txt = raw_model.generate_condition(
        **_inputs(raw_model, "<image>\nGenerate an image.", pil, None), **kwargs
    )
    blank = Image.new("RGB", (64, 64), (255, 255, 255))
    no_both = raw_model.generate_condition(
        **_inputs(raw_model, "<image>\nGenerate an image.", blank, None), **kwargs
    )

    def edit(global_seed: int) -> np.ndarray:
        torch.manual_seed(global_seed)
        with torch.autocast("cpu", torch.bfloat16):
            (image,) = raw_model.generate_img(cond=cond, no_both_cond=no_both, no_txt_cond=no_txt, **kwargs)
        return np.asarray(image)

    assert np.array_equal(edit(0), edit(0))
    assert not np.array_equal(edit(0), edit(1))  # same `seed`, another global RNG state
    assert raw_model.calls[-1]["edit"] is True


def test_cpu_generate_img_needs_a_bf16_autocast(raw_model: Any) -> None:
    vae = raw_model.visual_generator.vae
    try:
        vae.to(torch.bfloat16)  # all bf16, as the official scripts leave it: the fp32 decode fails
        for autocast in (False, True):
            with pytest.raises(RuntimeError):
                _t2i(raw_model, ["<image>\nx"], seed=1, autocast=autocast)
        raw_model.float()  # all fp32: the noise is drawn in bf16
        with pytest.raises(RuntimeError):
            _t2i(raw_model, ["<image>\nx"], seed=1, autocast=False)
        assert len(_t2i(raw_model, ["<image>\nx"], seed=1, autocast=True)) == 1
    finally:
        raw_model.to(torch.bfloat16)
        vae.float()


def test_standin_dir_is_a_snapshot_lookalike(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "modeling_ovis_u1_standin.py"} <= names
