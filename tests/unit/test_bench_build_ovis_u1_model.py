"""bench/build_ovis_u1_model.py: the configs it writes, its check of the remote-code files, and (where the
official remote code has been fetched into .remote/ovis-u1 and torchvision imports) a tiny build that the
`ovis-u1` backend loads and runs, the real model's parameter count, and the benchmark's CPU smoke on it.

The remote code is never part of the repository: fetch it as bench/README.md says, or point
OVIS_BENCH_REMOTE_CODE at a folder holding the six files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bench_scripts import BENCH, ROOT
from tests.fixtures.ovis_u1_real_code import REMOTE_CODE, builder, needs_remote_code


def test_the_full_size_config_is_the_published_architecture() -> None:
    config = builder.model_config(tiny=False, vocab_size=151669, eos_id=151645, pad_id=151643)

    llm = config["llm_config"]
    assert (llm["hidden_size"], llm["num_hidden_layers"], llm["intermediate_size"]) == (2048, 28, 6144)
    assert (llm["num_attention_heads"], llm["num_key_value_heads"], llm["head_dim"]) == (16, 8, 128)
    assert llm["vocab_size"] == 151936 and llm["tie_word_embeddings"] and llm["rope_theta"] == 1e6
    vision = config["visual_tokenizer_config"]
    backbone = vision["backbone_config"]
    assert vision["vocab_size"] == 16384 and vision["hidden_stride"] == 2
    assert (backbone["hidden_size"], backbone["num_hidden_layers"], backbone["intermediate_size"]) == (
        1024,
        24,
        2816,
    )
    assert backbone["fullatt_block_indexes"] == [7, 15, 23] and backbone["window_size"] == 112
    assert (backbone["min_pixels"], backbone["max_pixels"]) == (448 * 448, 1792 * 1792)
    dit = config["visual_generator_config"]
    assert (dit["hidden_size"], dit["num_heads"], dit["depth"], dit["depth_single_blocks"]) == (
        1536,
        12,
        6,
        12,
    )
    assert dit["context_in_dim"] == 2 * llm["hidden_size"]  # the LLM's last two hidden layers
    assert dit["in_channels"] == 4 * dit["vae_config"]["latent_channels"]  # latents in 2x2 patches
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_ovis_u1.OvisU1"
    processor = builder.preprocessor_config(tiny=False)
    assert (processor["min_pixels"], processor["max_pixels"]) == (448 * 448, 1792 * 1792)


def test_qwen3_added_tokens_follow_its_merged_vocabulary() -> None:
    ids = {
        content: builder.QWEN3_MERGED_TOKENS + k for k, (content, _) in enumerate(builder.QWEN3_ADDED_TOKENS)
    }

    assert (ids["<|endoftext|>"], ids["<|im_start|>"], ids["<|im_end|>"]) == (151643, 151644, 151645)
    assert (ids["<think>"], ids["</think>"]) == (151667, 151668)


def test_a_folder_without_the_official_files_is_refused(tmp_path: Path) -> None:
    for name in builder.REMOTE_CODE:
        (tmp_path / name).write_text("# not the official file\n")
    (tmp_path / "modeling_yak.py").unlink()

    with pytest.raises(SystemExit) as refused:
        builder.check_remote_code(tmp_path)

    message = str(refused.value)
    assert "modeling_yak.py is missing" in message
    assert (
        "configuration_ovis_u1.py has 24 bytes" in message
        and builder.REMOTE_CODE["modeling_aimv2.py"][1] in message
    )


@pytest.fixture
def own_import_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The builder puts the SDPA stand-in on sys.path and PYTHONPATH: neither leaks into later tests."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name == "flash_attn" or name.startswith(("flash_attn.", "transformers_modules")):
            del sys.modules[name]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ovis-u1-tiny") / "model"
    saved_path, saved_env = list(sys.path), os.environ.get("PYTHONPATH")
    try:
        record = builder.build(
            out, REMOTE_CODE, tiny=True, device="cpu", seed=0, tokenizer_cache=out.parent / "unused"
        )
    finally:
        sys.path[:] = saved_path
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env
    assert record["size"] == "tiny" and record["remote_code_sha256"] == {
        name: digest for name, (_, digest) in builder.REMOTE_CODE.items()
    }
    return out


@needs_remote_code
def test_the_backend_loads_a_tiny_build_and_runs_every_task(
    tiny_model: Path, tmp_path: Path, own_import_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from gpu_model.base import BackendOptions
    from gpu_model.ovis_u1 import OvisU1Backend
    from gpu_model.requests import CaptionRequest, EditRequest, GenerateRequest

    builder.ensure_flash_attn()
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    from transformers import dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    assert (tiny_model / "model.safetensors").is_file() and (tiny_model / "modeling_yak.py").is_file()
    backend = OvisU1Backend(BackendOptions(model_path=str(tiny_model), device="cpu"))
    info = backend.load()
    photos = [Image.new("RGB", size, color) for size, color in (((320, 200), "red"), ((96, 180), "blue"))]
    requests = [backend.prepare(CaptionRequest(photo, "What is it?", 6)) for photo in photos]
    assert all(isinstance(request, CaptionRequest) and request.prepared for request in requests)
    captions_in = [request for request in requests if isinstance(request, CaptionRequest)]

    captions = backend.caption(captions_in)
    alone = backend.caption(captions_in[:1])
    image = backend.generate([GenerateRequest("a red fox", 128, 96, 2, seed=1, txt_cfg=5.0)])[0]
    edited = backend.edit([EditRequest(photos[0], "make it blue", 2, seed=2, img_cfg=1.5, txt_cfg=6.0)])[0]

    assert info.name == "ovis-u1" and type(backend.model).__name__ == "OvisU1"
    assert len(captions) == 2 and all(isinstance(text, str) for text in captions)
    assert alone[0] == captions[0]  # left-padded batching leaves a row's greedy tokens as they are
    assert image.size == (128, 96)
    assert edited.size == (320, 192)  # the input's aspect ratio, sides multiples of 32


def _tokenizer_cache() -> Path:
    return builder.DEFAULT_TOKENIZER_CACHE


@needs_remote_code
@pytest.mark.skipif(
    not (_tokenizer_cache() / "tokenizer.json.gz").is_file(),
    reason="needs the Qwen3-sized tokenizer the builder trains once into .remote/tokenizer",
)
def test_the_full_size_build_has_the_real_model_s_parameters(tmp_path: Path, own_import_state: None) -> None:
    record = builder.build(
        tmp_path / "census",
        REMOTE_CODE,
        tiny=False,
        device="meta",
        seed=0,
        tokenizer_cache=_tokenizer_cache(),
        save=False,
    )

    params: dict[str, Any] = record["params_billion"]
    assert record["tokenizer_length"] == 151669
    assert params["total"] == pytest.approx(3.34, abs=0.01)
    assert params["llm"] == pytest.approx(1.72, abs=0.01)
    assert params["visual_tokenizer"] == pytest.approx(0.38, abs=0.01)
    assert params["generator"] == pytest.approx(1.21, abs=0.01)


@needs_remote_code
def test_the_benchmark_runs_the_real_code_path_end_to_end_on_the_cpu(
    tiny_model: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, str(BENCH / "gpu_throughput.py"), "--backend", "ovis-u1", "--smoke"]
    photos = ROOT / ".remote" / "photos"  # realistic_inputs.py export-photos, where scikit-image is absent
    if photos.is_dir():
        command += ["--photos", str(photos)]
    else:
        pytest.importorskip("skimage", reason="needs scikit-image or its sample photos in .remote/photos")

    done = subprocess.run(
        [*command, "--model-path", str(tiny_model), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    (written,) = tmp_path.glob("gpu_throughput-*.json")
    result = json.loads(written.read_text())
    assert result["backend"] == "ovis-u1" and result["errors"] == {}
    assert result["cold_start_s"] > 0 and result["cold_start_cached_s"] > 0
    caches = result["cold_start_cached"]["compile_cache"]
    assert {"TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "HF_MODULES_CACHE"} <= set(caches["set"])
    assert result["cold_start_cached"]["cache_contents_at_start"]["hf-modules"]["files"] > 0
    for task in ("caption", "generate", "edit"):
        entry = result["tasks"][task]
        assert entry["model_items_per_s"] > 0 and entry["system_items_per_s"] > 0, task
        assert entry["system"]["succeeded"] == entry["system"]["items"], task
    assert result["model"]["build"]["size"] == "tiny"
    steps = result["plan"]["steps"]
    for task, passes in (("generate", 2), ("edit", 3)):
        parts = result["tasks"][task]["breakdown"]
        assert parts["backbone"]["calls"] == steps * passes, parts
        assert parts["vae_decode"]["calls"] == 1 and parts["vae_encode"]["calls"] == (task == "edit")
        assert parts["condition"]["calls"] >= 1 and parts["total_s"] > parts["backbone"]["s"] > 0
    assert result["inputs"]["caption"]["max_new_tokens"]["min"] >= 40
