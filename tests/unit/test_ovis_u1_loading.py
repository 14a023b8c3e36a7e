"""ovis-u1 backend: finding the weights and the checks that run before loading, each with its fix."""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from gpu_model import BackendLoadError, BackendOptions, create_backend
from gpu_model import ovis_u1_loading as loading
from gpu_model.ovis_u1 import (
    DEFAULT_MAX_BATCH,
    InvalidRequest,
    OvisU1Backend,
    resolve_max_batch,
    validate_caption,
    validate_edit,
    validate_generate,
)
from gpu_model.requests import CaptionRequest, EditRequest, GenerateRequest


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, so that nothing on this machine is found by accident."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _load_error(model_path: str, revision: str | None = None) -> str:
    backend = create_backend(
        "ovis-u1", BackendOptions(model_path=model_path, revision=revision, device="cpu")
    )
    with pytest.raises(BackendLoadError) as excinfo:
        backend.load()
    return str(excinfo.value)


def test_missing_directory_names_model_places_and_fetch_command(tmp_path: Path, hf_cache: Path) -> None:
    missing = tmp_path / "models" / "Ovis-U1-3B"
    message = _load_error(str(missing))
    assert str(missing) in message
    assert "does not exist" in message
    assert "AIDC-AI/Ovis-U1-3B" in message
    assert "huggingface-cli download AIDC-AI/Ovis-U1-3B --local-dir /models/Ovis-U1-3B" in message
    assert "OVIS_BATCH_MODEL_PATH=/models/Ovis-U1-3B" in message


def test_hub_id_not_in_cache_names_the_cache_and_revision(hf_cache: Path) -> None:
    message = _load_error("AIDC-AI/Ovis-U1-3B", revision="0123abcd")
    assert "'AIDC-AI/Ovis-U1-3B'" in message
    assert f"Hugging Face cache {hf_cache}: no snapshot of AIDC-AI/Ovis-U1-3B at revision 0123abcd" in message
    assert "huggingface-cli download AIDC-AI/Ovis-U1-3B --revision 0123abcd --local-dir" in message
    assert "OVIS_BATCH_MODEL_PATH=AIDC-AI/Ovis-U1-3B" in message


def test_unset_model_path_looks_for_the_official_model(
    hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(hf_cache)
    backend = OvisU1Backend(BackendOptions(device="cpu"))
    with pytest.raises(BackendLoadError, match="AIDC-AI/Ovis-U1-3B"):
        backend.load()


def test_hub_id_resolves_to_its_cached_snapshot(hf_cache: Path) -> None:
    commit = "a" * 40
    repo = hf_cache / "models--AIDC-AI--Ovis-U1-3B"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert loading.resolve_model_dir("AIDC-AI/Ovis-U1-3B", None) == snapshot
    assert loading.resolve_model_dir("AIDC-AI/Ovis-U1-3B", commit) == snapshot


def test_directory_without_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "ovis_u1"}))
    with pytest.raises(BackendLoadError, match="holds no weights") as excinfo:
        loading.check_model_dir(tmp_path, str(tmp_path), None)
    assert "huggingface-cli download" in str(excinfo.value)


def test_missing_shards_are_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "ovis_u1"}))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(BackendLoadError, match=r"model-00002-of-00002\.safetensors"):
        loading.check_model_dir(tmp_path, str(tmp_path), None)


def test_complete_directory_gives_its_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "ovis_u1"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert loading.check_model_dir(tmp_path, str(tmp_path), None) == "ovis_u1"


def _remote_code(directory: Path, source: str, name: str = "modeling_aimv2.py") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(source)
    return directory


def test_flash_attn_missing_is_refused_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = _remote_code(tmp_path, "import torch\nfrom flash_attn import flash_attn_varlen_func\n")
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # `import flash_attn` now fails
    with pytest.raises(BackendLoadError) as excinfo:
        loading.check_remote_code_packages(model_dir, "cuda")
    message = str(excinfo.value)
    assert "flash_attn" in message
    assert 'pip install "ovis-batch[gpu]"' in message


def test_flash_attn_present_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = _remote_code(tmp_path, "from flash_attn import flash_attn_varlen_func\n")
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    loading.check_remote_code_packages(model_dir, "cuda")


def test_optional_flash_attn_import_is_not_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = "try:\n    from flash_attn import flash_attn_varlen_func\nexcept ImportError:\n    pass\n"
    model_dir = _remote_code(tmp_path, source)
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    loading.check_remote_code_packages(model_dir, "cuda")


def test_other_missing_packages_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = _remote_code(tmp_path, "import einops\nimport torchvision\n")
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(BackendLoadError, match=r"imports torchvision, not installed here.*ovis-batch\[gpu\]"):
        loading.check_remote_code_packages(model_dir, "cpu")


def test_transformers_that_ships_aimv2_is_refused(tmp_path: Path) -> None:
    config_source = 'class AIMv2Config:\n    model_type: str = "aimv2"\n'
    model_dir = _remote_code(tmp_path, config_source, name="configuration_aimv2.py")
    with pytest.raises(BackendLoadError) as excinfo:
        loading.check_transformers_compat(
            model_dir, "ovis_u1", version="4.56.0", builtin_types={"aimv2", "qwen3"}
        )
    message = str(excinfo.value)
    assert "'aimv2' is already used by a Transformers config" in message
    assert "transformers==4.51.3" in message
    assert 'pip install "ovis-batch[gpu]"' in message


def test_pinned_transformers_accepts_the_remote_model_types(tmp_path: Path) -> None:
    source = 'class C:\n    model_type = "ovis_u1"\n\nAutoConfig.register("aimv2", C)\n'
    model_dir = _remote_code(tmp_path, source, name="configuration_ovis_u1.py")
    assert loading.remote_model_types(model_dir) == {"ovis_u1", "aimv2"}
    loading.check_transformers_compat(model_dir, "ovis_u1")  # the installed 4.51.3 has no aimv2


def test_unpinned_transformers_warns_for_the_real_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = _remote_code(tmp_path, "x = 1\n", name="configuration_ovis_u1.py")
    with caplog.at_level(logging.WARNING, logger="gpu_model.ovis_u1_loading"):
        loading.check_transformers_compat(model_dir, "ovis_u1", version="4.53.0", builtin_types=set())
    assert "4.51.3" in caplog.text


def test_device_auto_and_missing_cuda() -> None:
    import torch

    assert loading.resolve_device("cpu") == "cpu"
    assert loading.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendLoadError, match="CUDA is not available"):
            loading.resolve_device("cuda")


def test_max_batch_overrides() -> None:
    assert DEFAULT_MAX_BATCH == {"caption": 64, "generate": 1, "edit": 1}
    assert resolve_max_batch({"caption": 16}) == {"caption": 16, "generate": 1, "edit": 1}
    with pytest.raises(BackendLoadError, match="unknown kinds"):
        resolve_max_batch({"upscale": 2})
    with pytest.raises(BackendLoadError, match="positive"):
        resolve_max_batch({"edit": 0})


def test_requests_outside_the_limits_are_invalid() -> None:
    image = Image.new("RGB", (64, 64))
    ok_generate = GenerateRequest(prompt="a cat", width=1024, height=768, steps=50, seed=42, txt_cfg=5.0)
    validate_generate(ok_generate)
    for bad in (
        GenerateRequest(prompt="a cat", width=1000, height=768, steps=50, seed=42, txt_cfg=5.0),
        GenerateRequest(prompt="a cat", width=1024, height=4096, steps=50, seed=42, txt_cfg=5.0),
        GenerateRequest(prompt="a cat", width=1024, height=768, steps=0, seed=42, txt_cfg=5.0),
        GenerateRequest(prompt="a cat", width=1024, height=768, steps=50, seed=-1, txt_cfg=5.0),
        GenerateRequest(prompt=" ", width=1024, height=768, steps=50, seed=42, txt_cfg=5.0),
    ):
        with pytest.raises(InvalidRequest):
            validate_generate(bad)
    validate_edit(
        EditRequest(image=image, instruction="make it red", steps=50, seed=1, img_cfg=1.5, txt_cfg=6.0)
    )
    with pytest.raises(InvalidRequest, match="img_cfg"):
        validate_edit(EditRequest(image=image, instruction="x", steps=50, seed=1, img_cfg=-1.0, txt_cfg=6.0))
    with pytest.raises(InvalidRequest, match="aspect ratio"):
        thin = Image.new("RGB", (1000, 4))
        validate_edit(EditRequest(image=thin, instruction="x", steps=50, seed=1, img_cfg=1.5, txt_cfg=6.0))
    validate_caption(CaptionRequest(image=image, prompt="What is it?", max_new_tokens=512))
    with pytest.raises(InvalidRequest, match="max_new_tokens"):
        validate_caption(CaptionRequest(image=image, prompt="What is it?", max_new_tokens=5000))
    assert InvalidRequest.error_code == "invalid_parameters"
