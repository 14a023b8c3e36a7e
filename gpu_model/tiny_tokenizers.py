"""The tiny backend's tokenizers: small BPE vocabularies shipped as package data, loaded offline.

BPE training is not deterministic across processes, so the files under `assets/tiny/` are trained once by
`bench/make_tiny_assets.py` and committed; every process then loads the same token ids.
"""

from __future__ import annotations

from pathlib import Path

# Imported from their modules: the package root's lazy exports look like dummy objects to mypy.
from transformers.models.clip.tokenization_clip_fast import CLIPTokenizerFast
from transformers.models.qwen2.tokenization_qwen2_fast import Qwen2TokenizerFast
from transformers.tokenization_utils_fast import PreTrainedTokenizerFast

from gpu_model.errors import BackendLoadError

ASSETS_DIR = Path(__file__).parent / "assets" / "tiny"
#: Qwen-style byte-level BPE with the Qwen3 chat tokens, for the caption LLM.
QWEN_DIR = ASSETS_DIR / "qwen3"
#: CLIP-style BPE, for the diffusion text encoders.
CLIP_DIR = ASSETS_DIR / "clip"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
THINK = "<think>"
END_THINK = "</think>"
#: Control tokens of the caption tokenizer; a user prompt may not smuggle them in.
QWEN_SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, THINK, END_THINK]

#: Qwen3's chat layout, reduced to what captioning uses: an empty think block is prefilled unless thinking
#: is enabled, as Ovis-U1 does for understanding.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if not enable_thinking | default(false) %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)

#: Prompt length of the CLIP text encoders (77 in Stable Diffusion; short keeps the CPU path fast).
CLIP_MAX_LENGTH = 32


def _require(directory: Path) -> Path:
    if not (directory / "tokenizer.json").is_file():
        raise BackendLoadError(
            f"tiny tokenizer files are missing from {directory}; "
            "regenerate them with `python bench/make_tiny_assets.py` or reinstall the package"
        )
    return directory


def load_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """The caption tokenizer, padding on the left for batched generation."""
    tokenizer: PreTrainedTokenizerFast = Qwen2TokenizerFast.from_pretrained(
        _require(QWEN_DIR), local_files_only=True
    )
    tokenizer.padding_side = "left"
    return tokenizer


def load_clip_tokenizer() -> CLIPTokenizerFast:
    """The text-encoder tokenizer shared by the diffusion pipelines."""
    tokenizer: CLIPTokenizerFast = CLIPTokenizerFast.from_pretrained(
        _require(CLIP_DIR), local_files_only=True
    )
    return tokenizer
