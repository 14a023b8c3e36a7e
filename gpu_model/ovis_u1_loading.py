"""Finding, checking and loading Ovis-U1 weights: a local directory or the local Hugging Face cache only.

Every check runs before the model is built and fails with a BackendLoadError that says what to do.
Torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from gpu_model.errors import BackendLoadError

logger = logging.getLogger(__name__)

#: Hub id of the official weights, used when no model path is configured.
DEFAULT_MODEL_ID = "AIDC-AI/Ovis-U1-3B"
#: model_type of the official config.json.
REAL_MODEL_TYPE = "ovis_u1"
#: The transformers version the official remote code is pinned to.
PINNED_TRANSFORMERS = "4.51.3"
#: The setting that points the worker at the weights.
MODEL_PATH_SETTING = "OVIS_BATCH_MODEL_PATH"
GPU_INSTALL = 'pip install "ovis-batch[gpu]"'
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Methods and attributes of the remote code that the backend calls.
REQUIRED_API = (
    "get_text_tokenizer",
    "get_visual_tokenizer",
    "preprocess_inputs",
    "generate",
    "generate_condition",
    "generate_img",
    "visual_generator",
)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# `model_type = "aimv2"` (optionally annotated) in a config class, or AutoConfig.register("aimv2", ...)
_CUSTOM_MODEL_TYPE = re.compile(
    r"""^\s+model_type\s*(?::\s*\w+\s*)?=\s*["']([\w.-]+)["']|AutoConfig\.register\(\s*["']([\w.-]+)["']""",
    re.MULTILINE,
)


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when CUDA is available, else 'cpu'; a CUDA device that is absent is an error."""
    import torch

    if requested in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise BackendLoadError(
            f"device {requested!r} was asked for but CUDA is not available here (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}). On a GPU host install the GPU worker with {GPU_INSTALL}; "
            "elsewhere set the device to 'auto' or 'cpu'."
        )
    return requested


def fetch_instructions(model_path: str, revision: str | None) -> str:
    """How to put the weights where a worker finds them."""
    from huggingface_hub import constants

    repo = model_path if _REPO_ID.match(model_path) else DEFAULT_MODEL_ID
    rev = f" --revision {revision}" if revision else ""
    local_dir = f"/models/{repo.split('/')[-1]}"
    return (
        "Workers never download weights. Fetch them once, on a machine with internet access:\n"
        f"  huggingface-cli download {repo}{rev} --local-dir {local_dir}\n"
        f"then point the worker at them: {MODEL_PATH_SETTING}={local_dir}\n"
        f"(or run `huggingface-cli download {repo}{rev}` to fill the Hugging Face cache at "
        f"{constants.HF_HUB_CACHE} and set {MODEL_PATH_SETTING}={repo})."
    )


def resolve_model_dir(model_path: str | None, revision: str | None) -> Path:
    """The local directory holding the model: `model_path` itself, or its snapshot in the HF cache."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    model_path = model_path or DEFAULT_MODEL_ID
    local = Path(model_path).expanduser()
    if local.is_dir():
        if revision:
            logger.warning("revision %s ignored: %s is a local directory, used as it is", revision, local)
        return local.resolve()
    state = "is not a directory" if local.exists() else "does not exist"
    looked = [f"local directory {local.resolve()}: {state}"]
    if _REPO_ID.match(model_path):
        try:
            return Path(snapshot_download(model_path, revision=revision, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError):
            looked.append(
                f"Hugging Face cache {constants.HF_HUB_CACHE}: no snapshot of {model_path} "
                f"at revision {revision or 'main'}"
            )
    where = "\n".join(f"  - {line}" for line in looked)
    raise BackendLoadError(
        f"Ovis-U1 weights not found: model {model_path!r}"
        + (f", revision {revision}" if revision else "")
        + f" ({MODEL_PATH_SETTING}). Looked in:\n{where}\n"
        + fetch_instructions(model_path, revision)
    )


def check_model_dir(directory: Path, model_path: str, revision: str | None) -> str:
    """Check that `directory` holds a config and complete weights; return the config's model_type."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise BackendLoadError(
            f"{directory} is not a model directory: it has no config.json.\n"
            + fetch_instructions(model_path, revision)
        )
    weights = [directory / name for name in WEIGHT_FILES if (directory / name).is_file()]
    if not weights:
        raise BackendLoadError(
            f"{directory} holds no weights (looked for {', '.join(WEIGHT_FILES)}); the download may be "
            "incomplete.\n" + fetch_instructions(model_path, revision)
        )
    for index in (w for w in weights if w.name.endswith(".index.json")):
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise BackendLoadError(
                f"{directory} is missing weight shards {', '.join(missing)}; the download is incomplete.\n"
                + fetch_instructions(model_path, revision)
            )
    model_type: str = json.loads(config_file.read_text()).get("model_type", "")
    return model_type


def remote_model_types(directory: Path) -> set[str]:
    """Model types that the directory's remote code defines or registers itself."""
    found: set[str] = set()
    for source in directory.glob("*.py"):
        for declared, registered in _CUSTOM_MODEL_TYPE.findall(source.read_text(errors="replace")):
            found.add(declared or registered)
    return found


def check_transformers_compat(
    directory: Path,
    model_type: str,
    *,
    version: str | None = None,
    builtin_types: set[str] | None = None,
) -> None:
    """Refuse a transformers that already ships a model type the remote code registers (e.g. 'aimv2')."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    version = version or transformers.__version__
    builtin = set(CONFIG_MAPPING_NAMES) if builtin_types is None else builtin_types
    clashes = sorted(remote_model_types(directory) & builtin)
    if clashes:
        raise BackendLoadError(
            f"transformers {version} cannot load this model's remote code: it already ships the model "
            f"type(s) {', '.join(repr(c) for c in clashes)} that the remote code registers itself "
            f"(\"'{clashes[0]}' is already used by a Transformers config\"). The Ovis-U1 remote code needs "
            f"transformers=={PINNED_TRANSFORMERS}: install the GPU worker with {GPU_INSTALL}."
        )
    if model_type == REAL_MODEL_TYPE and version != PINNED_TRANSFORMERS:
        logger.warning(
            "transformers %s is not the version the Ovis-U1 remote code is pinned to (%s); %s installs it",
            version,
            PINNED_TRANSFORMERS,
            GPU_INSTALL,
        )


def importable(name: str) -> bool:
    """Whether `import name` works here (a broken CUDA extension counts as missing)."""
    try:
        importlib.import_module(name)
    except Exception:  # ImportError, or OSError / RuntimeError from a mismatched compiled extension
        return False
    return True


def missing_remote_code_packages(directory: Path) -> list[str]:
    """Top-level packages the remote code imports unconditionally and that do not import here."""
    from transformers.dynamic_module_utils import get_imports

    needed: set[str] = set()
    for source in sorted(directory.glob("*.py")):
        needed.update(get_imports(str(source)))  # imports inside try/except are optional: skipped
    return sorted(name for name in needed if not importable(name))


def check_remote_code_packages(directory: Path, device: str) -> None:
    """Fail early, with the install command, when the remote code imports a package that is missing."""
    missing = missing_remote_code_packages(directory)
    if not missing:
        return
    if "flash_attn" in missing:
        where = "on the GPU" if device.startswith("cuda") else "even on the CPU, since the import comes first"
        raise BackendLoadError(
            f"The model's remote code imports flash_attn, which is missing or does not import here "
            f"(needed {where}). Install the GPU worker with {GPU_INSTALL} (flash-attn 2.7.4.post1, built "
            "for the installed CUDA torch)."
            + (
                f" Also missing: {', '.join(m for m in missing if m != 'flash_attn')}."
                if len(missing) > 1
                else ""
            )
        )
    raise BackendLoadError(
        f"The model's remote code imports {', '.join(missing)}, not installed here. Install the GPU worker "
        f"with {GPU_INSTALL}."
    )


def load_model(directory: Path, *, device: str, dtype_name: str) -> Any:
    """from_pretrained with the remote code, offline, then eval() and the device and dtype for all of it."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), torch_dtype=dtype, trust_remote_code=True, local_files_only=True
        )
        # The remote code builds its LLM in the dtype of its own sub-config, whatever torch_dtype says:
        # without this cast the multimodal merge fails on a dtype mismatch (the official scripts do it too).
        model = model.eval().to(device).to(dtype)
    except torch.OutOfMemoryError as exc:
        raise BackendLoadError(
            f"{device} ran out of memory while loading the model: Ovis-U1-3B needs about 8 GB in bf16 plus "
            "room for activations; free the GPU or use a larger one."
        ) from exc
    except ValueError as exc:
        if "is already used by a Transformers config" in str(exc):
            raise BackendLoadError(
                f"{exc}: the Ovis-U1 remote code needs transformers=={PINNED_TRANSFORMERS} ({GPU_INSTALL})."
            ) from exc
        raise BackendLoadError(f"loading {directory} failed: {exc}") from exc
    except ImportError as exc:
        raise BackendLoadError(f"the model's remote code failed to import: {exc}. {GPU_INSTALL}") from exc
    except (OSError, RuntimeError) as exc:
        raise BackendLoadError(f"loading {directory} failed: {exc}") from exc
    absent = [name for name in REQUIRED_API if not hasattr(model, name)]
    if absent:
        raise BackendLoadError(
            f"{directory} is not an Ovis-U1 model: its code has no {', '.join(absent)} "
            f"(model class {type(model).__name__})."
        )
    if device == "cpu":
        # generate_img decodes under torch.autocast(float32), which the CPU refuses (it disables itself);
        # the decode then only runs with the VAE in fp32. The backend samples under a bf16 CPU autocast.
        vae = getattr(model.visual_generator, "vae", None)
        if vae is not None:
            vae.float()
    return model
