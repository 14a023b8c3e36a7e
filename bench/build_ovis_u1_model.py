"""Build an Ovis-U1-3B model directory with random weights from the official remote code.

The weights cannot be downloaded here, but the model's own code can be read: this puts the six official
remote-code files the user fetched beside a config, an image-processor config, a tokenizer and random bf16
safetensors, so that the `ovis-u1` backend (gpu_model/ovis_u1_loading.py) loads the real architecture
through `from_pretrained(..., trust_remote_code=True)` and runs the real code path at the real cost.

    python bench/build_ovis_u1_model.py --remote-code .remote/ovis-u1 --out /tmp/Ovis-U1-3B-random
    python bench/build_ovis_u1_model.py --remote-code .remote/ovis-u1 --out /tmp/ovis-u1-tiny --tiny
    python bench/build_ovis_u1_model.py --remote-code .remote/ovis-u1 --census    # parameters, no weights

Full size: Qwen3-1.7B LLM, AIMv2 vision tower with Ovis's visual head (16,384 visual words), the Yak DiT
(6 double + 12 single blocks, hidden 1536) with its token refiner, and a Flux-shaped VAE: 3.34B parameters,
about 6.7 GB in bf16, in two shards. The model is built on the GPU when there is one (torch's default device):
initialising 3.3B parameters there is far faster than on the CPU and copying. `--tiny` builds the same code
at toy sizes, for tests on the CPU.

The tokenizer: a byte-level BPE with Qwen's pre-tokenizer and Qwen3's vocabulary size (151,643 merged tokens,
then Qwen3's 26 added tokens at their ids: <|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, ...),
trained on the Python sources and docs installed on the machine. It is trained once and kept
in `--tokenizer-cache` (default .remote/tokenizer, ignored by git): BPE training is not deterministic, so
runs that should compare reuse one. `--tiny` uses the tiny backend's committed tokenizer.

Hosts without flash-attn (which the remote code imports) get bench/sdpa_flash_attn on sys.path. Prints one
JSON object as its last line.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SDPA_FLASH_ATTN = ROOT / "bench" / "sdpa_flash_attn"
TINY_TOKENIZER = ROOT / "gpu_model" / "assets" / "tiny" / "qwen3"
DEFAULT_TOKENIZER_CACHE = ROOT / ".remote" / "tokenizer"

#: The official remote-code files (AIDC-AI/Ovis-U1-3B), as read from the search index: length and sha256.
REMOTE_CODE: dict[str, tuple[int, str]] = {
    "configuration_ovis_u1.py": (12364, "ef58e842ee9a82c5b159cbee3c7ae5e13bc7885e77080a2dfc15895a5ce43573"),
    "modeling_ovis_u1.py": (43303, "9349a54b57200e3d8a10ea765dd131d15dd6b48269dcbd6499a666af40ec55d6"),
    "configuration_aimv2.py": (3236, "11ee56bf8e2948609618426e9c4414ba0bffbf87065c3d9860f89cbc32f15e3b"),
    "modeling_aimv2.py": (16208, "c5807e791c84564a4a89aab0e9234438377ae401aae61a64bb841a5483c5747f"),
    "configuration_yak.py": (1799, "38e07d55a371c24a31769941d0e230a44d97e8afeba9c33928cd01265210d716"),
    "modeling_yak.py": (49961, "1996352251b1040e4d33b25311a94aa635827c4f9dca02474b13c306681d561b"),
}

#: Qwen3's vocabulary: merged tokens, then these added tokens in this order (True: special).
QWEN3_MERGED_TOKENS = 151643
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
#: What save_pretrained writes for the slow tokenizer, which nothing here loads.
SLOW_TOKENIZER_FILES = ("vocab.json", "merges.txt")
#: Text the tokenizer is trained on: Python sources and docs, files under 1 MB, up to this many bytes.
CORPUS_BYTES = 80 * 2**20

#: CLIP's normalisation, which AIMv2 uses.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


# -- configs -----------------------------------------------------------------------------------------------
def _sizes(tiny: bool) -> dict[str, Any]:
    """Every dimension that differs between the full-size model and the tiny one."""
    if not tiny:
        return {
            "llm": {
                "hidden_size": 2048,
                "intermediate_size": 6144,
                "num_hidden_layers": 28,
                "num_attention_heads": 16,
                "num_key_value_heads": 8,
                "head_dim": 128,
                "vocab_size": 151936,
                "max_position_embeddings": 40960,
            },
            "vision": {
                "hidden_size": 1024,
                "intermediate_size": 2816,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "image_size": 448,
                "fullatt_block_indexes": [7, 15, 23],
            },
            "visual_vocab": 16384,
            "pixels": (448 * 448, 1792 * 1792),
            "dit": {
                "hidden_size": 1536,
                "num_heads": 12,
                "depth": 6,
                "depth_single_blocks": 12,
                "axes_dim": [16, 56, 56],
            },
            "vae": {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32},
        }
    return {
        "llm": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 0,  # the tokenizer's length
            "max_position_embeddings": 4096,
            # peaked logits, so that greedy decoding is not decided by rounding noise
            "initializer_range": 0.2,
        },
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 56,
            "fullatt_block_indexes": [1],
        },
        "visual_vocab": 64,
        "pixels": (56 * 56, 112 * 112),
        "dit": {
            "hidden_size": 64,
            "num_heads": 2,
            "depth": 1,
            "depth_single_blocks": 1,
            "axes_dim": [8, 12, 12],
        },
        "vae": {"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4},
    }


def model_config(*, tiny: bool, vocab_size: int, eos_id: int, pad_id: int) -> dict[str, Any]:
    """config.json of the model directory.

    From the published configuration (reference/ovis-u1.md): every dimension of the LLM, the vision tower
    (window 112 px, full attention in blocks 7, 15, 23, 2x2 merge, 448x448 to 1792x1792 pixels), the
    visual vocabulary and the Yak DiT. Not published there, chosen: the vision tower keeps a learned 448-px
    position table interpolated per image (AIMv2's, beside its RoPE), the sequence limit does not truncate
    any input of the benchmark (16,384), the LLM uses PyTorch SDPA, and the VAE is Flux's (16 latent
    channels, scaling 0.3611, shift 0.1159); none of them changes the compute materially.
    """
    sizes = _sizes(tiny)
    llm = sizes["llm"]
    llm_config = {
        "model_type": "qwen3",
        **llm,
        "vocab_size": llm["vocab_size"] or vocab_size,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "bos_token_id": pad_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }
    min_pixels, max_pixels = sizes["pixels"]
    vision = sizes["vision"]
    backbone = {
        "model_type": "aimv2",
        **vision,
        "num_channels": 3,
        "patch_size": 14,
        "rms_norm_eps": 1e-5,
        "qkv_bias": False,
        "use_bias": False,
        "hidden_stride": 2,
        "window_size": 112,
        "temporal_patch_size": 1,
        "preserve_original_pe": True,
        "interpolate_pe_method": "two_dim",
        "disable_rope": False,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
    }
    visual_tokenizer = {
        "model_type": "aimv2_visual_tokenizer",
        "vocab_size": sizes["visual_vocab"],
        "tokenize_function": "softmax",
        "tau": 1.0,
        "depths": None,
        "drop_cls_token": False,
        "hidden_stride": 2,
        "backbone_config": backbone,
    }
    dit = sizes["dit"]
    vae = {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 16,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        **sizes["vae"],
        "act_fn": "silu",
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": True,
        "force_upcast": True,
    }
    generator = {
        "model_type": "yak",
        "in_channels": 64,  # 16 latent channels in 2x2 patches
        "out_channels": 64,
        "vec_in_dim": dit["hidden_size"],  # the refiner's pooled output
        "context_in_dim": 2 * llm["hidden_size"],  # the LLM's last two hidden layers side by side
        **dit,
        "mlp_ratio": 4,
        "theta": 10000,
        "qkv_bias": True,
        "guidance_embed": False,
        "txt_type": "refiner",
        "timestep_shift": False,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "vae_config": vae,
    }
    return {
        "model_type": "ovis_u1",
        "architectures": ["OvisU1"],
        "auto_map": {
            "AutoConfig": "configuration_ovis_u1.OvisU1Config",
            "AutoModelForCausalLM": "modeling_ovis_u1.OvisU1",
        },
        "llm_config": llm_config,
        "visual_tokenizer_config": visual_tokenizer,
        "visual_generator_config": generator,
        "hidden_size": llm["hidden_size"],
        "multimodal_max_length": 16384,
        "conversation_formatter_class": "Qwen3ConversationFormatter",
        "llm_attn_implementation": "sdpa",
        "disable_tie_weight": False,
        "torch_dtype": "bfloat16",
    }


def preprocessor_config(*, tiny: bool) -> dict[str, Any]:
    """preprocessor_config.json: a CLIP image processor carrying the native-resolution bounds."""
    min_pixels, max_pixels = _sizes(tiny)["pixels"]
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 448},
        "resample": 3,
        "do_center_crop": False,
        "crop_size": {"height": 448, "width": 448},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "do_convert_rgb": True,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "patch_size": 14,
        "temporal_patch_size": 1,
        "hidden_stride": 2,
    }


# -- remote code -------------------------------------------------------------------------------------------
def check_remote_code(folder: Path) -> dict[str, str]:
    """The six files' sha256, refusing a folder that lacks one or holds another version."""
    digests, problems = {}, []
    for name, (length, expected) in REMOTE_CODE.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        data = path.read_bytes()
        digests[name] = hashlib.sha256(data).hexdigest()
        if digests[name] != expected:
            problems.append(
                f"{name} has {len(data)} bytes, sha256 {digests[name]} (expected {length}, {expected})"
            )
    if problems:
        raise SystemExit(
            f"{folder} does not hold the official Ovis-U1 remote code:\n  " + "\n  ".join(problems)
        )
    return digests


def ensure_flash_attn() -> str:
    """'flash-attn <version>' when it imports, else the SDPA stand-in put on sys.path (and PYTHONPATH, for
    children), since the remote code imports it."""
    if importlib.util.find_spec("flash_attn") is not None and str(SDPA_FLASH_ATTN) not in sys.path:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"flash-attn {version('flash_attn')}"
        except PackageNotFoundError:
            return "flash_attn without package metadata"
    if str(SDPA_FLASH_ATTN) not in sys.path:
        sys.path.insert(0, str(SDPA_FLASH_ATTN))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(SDPA_FLASH_ATTN) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(SDPA_FLASH_ATTN), *filter(None, paths)])
    return "SDPA stand-in (bench/sdpa_flash_attn)"


@contextlib.contextmanager
def own_modules_cache() -> Iterator[None]:
    """Remote code imported from a throwaway HF_MODULES_CACHE, so a build leaves no module behind."""
    from transformers import dynamic_module_utils

    saved = dynamic_module_utils.HF_MODULES_CACHE, os.environ.get("HF_MODULES_CACHE")
    with tempfile.TemporaryDirectory(prefix="ovis-u1-build-modules-") as folder:
        dynamic_module_utils.HF_MODULES_CACHE = folder
        os.environ["HF_MODULES_CACHE"] = folder
        try:
            yield
        finally:
            dynamic_module_utils.HF_MODULES_CACHE = saved[0]
            if saved[1] is None:
                os.environ.pop("HF_MODULES_CACHE", None)
            else:
                os.environ["HF_MODULES_CACHE"] = saved[1]
            for name in [m for m in sys.modules if m.startswith("transformers_modules")]:
                del sys.modules[name]


# -- tokenizers --------------------------------------------------------------------------------------------
def _corpus() -> Iterator[str]:
    """Python sources and docs of this interpreter, in a fixed order, up to CORPUS_BYTES."""
    taken = 0
    for key in ("stdlib", "purelib"):
        root = Path(sysconfig.get_paths()[key])
        for path in sorted(root.rglob("*")):
            if path.suffix not in (".py", ".rst", ".md", ".txt") or not path.is_file():
                continue
            size = path.stat().st_size
            if size > 2**20:
                continue
            try:
                yield path.read_text(errors="replace")
            except OSError:
                continue
            taken += size
            if taken >= CORPUS_BYTES:
                return


def train_qwen3_sized_tokenizer(dest: Path) -> None:
    """Train the byte-level BPE and save it with Qwen3's added tokens as a Qwen2TokenizerFast in `dest`."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import Qwen2TokenizerFast

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=QWEN3_MERGED_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer)
    if backend.get_vocab_size() != QWEN3_MERGED_TOKENS:
        raise SystemExit(
            f"the tokenizer corpus gave {backend.get_vocab_size()} tokens, not {QWEN3_MERGED_TOKENS}: "
            "too little text is installed here; build the tokenizer elsewhere and pass --tokenizer-cache"
        )
    for content, special in QWEN3_ADDED_TOKENS:
        token = AddedToken(content, special=special, normalized=False)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        errors="replace",
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
        additional_special_tokens=[content for content, special in QWEN3_ADDED_TOKENS if special],
    )
    expected = {content: QWEN3_MERGED_TOKENS + k for k, (content, _) in enumerate(QWEN3_ADDED_TOKENS)}
    got = {content: tokenizer.convert_tokens_to_ids(content) for content in expected}
    if got != expected:
        raise SystemExit(f"added tokens landed at other ids than Qwen3's: {got}")
    tokenizer.save_pretrained(dest)


def qwen3_sized_tokenizer(dest: Path, cache: Path) -> str:
    """Put the Qwen3-sized tokenizer in `dest`: from `cache` (tokenizer.json gzipped), else trained and
    cached. Returns where it came from."""
    packed = cache / "tokenizer.json.gz"
    origin = f"cached in {cache}"
    if not packed.is_file():
        with tempfile.TemporaryDirectory(prefix="qwen3-tokenizer-") as folder:
            start = time.perf_counter()
            train_qwen3_sized_tokenizer(Path(folder))
            cache.mkdir(parents=True, exist_ok=True)
            for path in Path(folder).iterdir():
                if path.name in SLOW_TOKENIZER_FILES:
                    continue  # the fast tokenizer reads tokenizer.json alone
                if path.name == "tokenizer.json":
                    with open(path, "rb") as raw, gzip.open(packed, "wb", compresslevel=9) as out:
                        shutil.copyfileobj(raw, out)
                else:
                    shutil.copy(path, cache / path.name)
            origin = f"trained here in {time.perf_counter() - start:.0f}s, cached in {cache}"
    dest.mkdir(parents=True, exist_ok=True)
    for path in cache.iterdir():
        if path.name == packed.name:
            with gzip.open(path, "rb") as raw, open(dest / "tokenizer.json", "wb") as out:
                shutil.copyfileobj(raw, out)
        elif path.is_file():
            shutil.copy(path, dest / path.name)
    return origin


def tiny_tokenizer(dest: Path) -> str:
    """The tiny backend's committed Qwen-style tokenizer."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in TINY_TOKENIZER.iterdir():
        shutil.copy(path, dest / path.name)
    return f"copied from {TINY_TOKENIZER.relative_to(ROOT)}"


# -- build -------------------------------------------------------------------------------------------------
def census(model: Any) -> dict[str, float]:
    """Parameters per part, in billions (tied tensors counted once)."""
    seen: set[int] = set()

    def count(module: Any) -> int:
        total = 0
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel()
        return total

    generator = model.visual_generator
    parts = {
        "llm": count(model.llm),
        "visual_tokenizer": count(model.visual_tokenizer),
        "visual_embeddings": count(model.vte),
        "generator_dit": count(generator.backbone),
        "generator_vae": count(generator.vae),
    }
    parts["generator"] = parts["generator_dit"] + parts["generator_vae"]
    parts["total"] = sum(
        parts[name] for name in ("llm", "visual_tokenizer", "visual_embeddings", "generator")
    )
    return {name: round(value / 1e9, 4) for name, value in parts.items()}


def write_directory(out: Path, remote_code: Path, *, tiny: bool, tokenizer_cache: Path) -> dict[str, Any]:
    """Everything but the weights: configs, tokenizer and the remote-code files."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    origin = tiny_tokenizer(out) if tiny else qwen3_sized_tokenizer(out, tokenizer_cache)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    config = model_config(
        tiny=tiny, vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id
    )
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(tiny=tiny), indent=2) + "\n")
    for name in REMOTE_CODE:
        shutil.copy(remote_code / name, out / name)
    return {"tokenizer": origin, "tokenizer_length": len(tokenizer)}


def build(
    out: Path,
    remote_code: Path,
    *,
    tiny: bool,
    device: str,
    seed: int,
    tokenizer_cache: Path,
    save: bool = True,
    max_shard_size: str = "5GB",
) -> dict[str, Any]:
    """Write the model directory (`save=False`: only count the parameters) and say what was done."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    digests = check_remote_code(remote_code)
    flash_attn = ensure_flash_attn()
    start = time.perf_counter()
    info = write_directory(out, remote_code, tiny=tiny, tokenizer_cache=tokenizer_cache)
    info["files_s"] = round(time.perf_counter() - start, 2)
    with own_modules_cache():
        config = AutoConfig.from_pretrained(out, trust_remote_code=True, local_files_only=True)
        torch.manual_seed(seed)
        start = time.perf_counter()
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(
                config, trust_remote_code=True, torch_dtype=torch.bfloat16
            )
        model = model.to(torch.bfloat16)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        info["build_s"] = round(time.perf_counter() - start, 2)
        info["params_billion"] = census(model)
        if save:
            start = time.perf_counter()
            model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
            info["save_s"] = round(time.perf_counter() - start, 2)
    record = {
        "size": "tiny" if tiny else "full",
        "device": device,
        "seed": seed,
        "flash_attn": flash_attn,
        "remote_code_sha256": digests,
        **info,
    }
    if save:
        (out / "ovis_batch_build.json").write_text(json.dumps(record, indent=2) + "\n")
    else:
        shutil.rmtree(out, ignore_errors=True)
    return record


def main() -> None:
    """Build the directory and print what was done as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--remote-code", type=Path, required=True, help="folder holding the six official files"
    )
    parser.add_argument("--out", type=Path, help="model directory to write (must not hold a model yet)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for the CPU")
    parser.add_argument(
        "--census", action="store_true", help="count the parameters (meta device), write nothing"
    )
    parser.add_argument("--device", default="auto", help="auto: cuda when there is one, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer-cache", type=Path, default=DEFAULT_TOKENIZER_CACHE)
    parser.add_argument(
        "--max-shard-size", default="5GB", help="safetensors shard size (full size: 2 shards)"
    )
    args = parser.parse_args()

    import torch

    if args.census:
        out = Path(tempfile.mkdtemp(prefix="ovis-u1-census-"))
        device = "meta"
    else:
        if args.out is None:
            parser.error("--out is required (or --census)")
        out = args.out
        if (out / "config.json").exists():
            parser.error(f"{out} already holds a model; choose another --out or remove it")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    record = build(
        out,
        args.remote_code,
        tiny=args.tiny,
        device=device,
        seed=args.seed,
        tokenizer_cache=args.tokenizer_cache,
        max_shard_size=args.max_shard_size,
        save=not args.census,
    )
    print(json.dumps({"out": None if args.census else str(out), **record}))


if __name__ == "__main__":
    main()
