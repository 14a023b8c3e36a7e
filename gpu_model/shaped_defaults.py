"""The `ovis-u1-shaped` backend's prompts, defaults and limits (those of the official scripts), and the edit
output size."""

from __future__ import annotations

import math
from typing import Any

WEIGHT_SEED = 0
# The official scripts' prompts, after their "<image>\n" (the vision block here).
CAPTION_PROMPT = (
    "Describe the image by detailing the color, shape, size, texture, quantity, text, and spatial "
    "relationships of the objects."
)
GENERATE_PREFIX = (
    "Describe the image by detailing the color, shape, size, texture, quantity, text, and spatial "
    "relationships of the objects:"
)
GENERIC_PROMPT = "Generate an image."
BLANK = (255, 255, 255)
#: Edit outputs: the input's aspect, sides multiples of 32, at most 1280 * 28 * 28 pixels (a 1024 x 1024
#: input gives 992 x 992, as the official edit does).
EDIT_FACTOR = 32
EDIT_MAX_PIXELS = 1280 * 28 * 28
MAX_CAPTION_TOKENS = 4096
MAX_STEPS = 200
#: Images run one at a time (the DiT is compute-bound at batch 1); a micro-batch of several is queued on the
#: GPU back to back, each item's host work (conditions, copies) overlapping the previous item's passes.
MAX_BATCH = {"caption": 256, "generate": 8, "edit": 4}
#: Distinct prompts whose token ids are kept.
TOKEN_CACHE_SIZE = 1024
DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "caption": {"prompt": CAPTION_PROMPT, "max_new_tokens": 128},
        "generate": {"width": 1024, "height": 1024, "steps": 50, "txt_cfg": 5.0},
        "edit": {"steps": 50, "img_cfg": 1.5, "txt_cfg": 6.0},
    },
    "tiny": {
        "caption": {"prompt": CAPTION_PROMPT, "max_new_tokens": 16},
        "generate": {"width": 64, "height": 64, "steps": 4, "txt_cfg": 5.0},
        "edit": {"steps": 4, "img_cfg": 1.5, "txt_cfg": 6.0},
    },
}


def edit_size(width: int, height: int, max_pixels: int = EDIT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an edit's output: Qwen2-VL's smart resize to multiples of 32 under `max_pixels`."""
    w = max(EDIT_FACTOR, round(width / EDIT_FACTOR) * EDIT_FACTOR)
    h = max(EDIT_FACTOR, round(height / EDIT_FACTOR) * EDIT_FACTOR)
    if w * h > max_pixels:
        beta = math.sqrt(width * height / max_pixels)
        w = max(EDIT_FACTOR, math.floor(width / beta / EDIT_FACTOR) * EDIT_FACTOR)
        h = max(EDIT_FACTOR, math.floor(height / beta / EDIT_FACTOR) * EDIT_FACTOR)
    return w, h
