"""Ovis-U1's generation conditions: a generate or edit request's host work, and each condition's pass
through the LLM driven from the model's own parts.

The host work (the blank or resized image, the generator's aspect-ratio crop and VAE pixels, the small copy
the understanding branch sees, the model's own preprocess_inputs) needs no device, so the worker does it
ahead on its I/O threads (`image_inputs`), as it does for captions.

Why not the model's generate_condition for the device work: it empties the CUDA allocator's cache on every
call (the host waits for the device, and what was freed is allocated again by the next pass), and it runs the
LLM as a causal language model with labels, so each call also computes logits over the whole vocabulary at
every position and a loss, none of which a condition uses: it keeps the last two hidden layers. Here the
model's own multimodal merge makes the input embeddings and the LLM's base model (no head) the hidden
layers: the same layers in the same dtype, equal values, without that work. A model that lacks one of those
parts is left to its generate_condition.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from PIL import Image

from gpu_model.ovis_u1 import BLANK_COLOR, EDIT_PREFIX, GENERATE_PREFIX, GENERIC_PROMPT
from gpu_model.requests import EditRequest, GenerateRequest

#: The keywords the project passes to the model's multimodal merge; a merge without them is not driven.
MERGE_KEYWORDS = (
    "text_input_ids",
    "text_attention_masks",
    "text_labels",
    "pixel_values",
    "grid_thws",
    "left_padding",
)


class ConditionInputs(NamedTuple):
    """One condition's understanding-branch inputs on the host, as preprocess_inputs returns them."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor
    grid_thws: torch.Tensor


@dataclass(frozen=True, eq=False)  # tensors and images: compared by identity
class ImageInputs:
    """A generate or edit request's host work: its output size, the inputs of its conditions (the full one,
    and an edit's no-text one) and the VAE pixels of its image (the blank, or the resized source)."""

    width: int
    height: int
    cond: ConditionInputs
    no_txt: ConditionInputs | None
    vae_pixel_values: torch.Tensor
    #: What the inputs were made from: the prompt or instruction, and an edit's source image.
    text: str
    source: Image.Image | None = None

    def serves(self, request: GenerateRequest | EditRequest) -> bool:
        """Whether these inputs were made from `request`'s prompt, size and image."""
        if isinstance(request, GenerateRequest):
            made = (request.prompt, request.width, request.height)
            return self.source is None and (self.text, self.width, self.height) == made
        return self.source is request.image and self.text == request.instruction


def edit_size(visual_tokenizer: Any, width: int, height: int) -> tuple[int, int]:
    """(height, width) of an edit's output: the input's aspect, sides multiples of 32, ~1 MP at most."""
    new_height, new_width = visual_tokenizer.smart_resize(height, width, factor=32)
    return int(new_height), int(new_width)


def blank(width: int, height: int) -> Image.Image:
    """The blank image of the text-to-image and unconditional conditions."""
    return Image.new("RGB", (width, height), BLANK_COLOR)


def condition_images(
    model: Any, image: Image.Image, width: int, height: int
) -> tuple[Image.Image, torch.Tensor]:
    """The image as a condition's understanding branch sees it (at that branch's smallest size, as the
    official flow), and its VAE pixels, from the generator's own crop to the output size."""
    vt = model.get_visual_tokenizer()
    image, vae_pixel_values, _ = model.visual_generator.process_image_aspectratio(image, (width, height))
    small_h, small_w = vt.smart_resize(image.height, image.width, max_pixels=vt.image_processor.min_pixels)
    return image.resize((small_w, small_h)), vae_pixel_values


def understanding_inputs(model: Any, prompt: str, image: Image.Image) -> ConditionInputs:
    """preprocess_inputs of a generation prompt (no generation preface) and its image."""
    _, input_ids, pixel_values, grid_thws = model.preprocess_inputs(
        prompt,
        [image],
        generation_preface=None,
        return_labels=False,
        propagate_exception=False,
        multimodal_type="single_image",
        fix_sample_overall_length_navit=False,
    )
    return ConditionInputs(input_ids, pixel_values, grid_thws)


def unconditional_inputs(model: Any, width: int, height: int) -> ConditionInputs:
    """The no-both condition's inputs: the generic prompt on a blank image of the output size."""
    small, _ = condition_images(model, blank(width, height), width, height)
    return understanding_inputs(model, GENERIC_PROMPT, small)


def image_inputs(model: Any, request: GenerateRequest | EditRequest) -> ImageInputs:
    """The host work of one request, in the official flows' order (an edit's no-text condition first)."""
    if isinstance(request, GenerateRequest):
        width, height = request.width, request.height
        small, vae_pixel_values = condition_images(model, blank(width, height), width, height)
        cond = understanding_inputs(model, GENERATE_PREFIX + request.prompt, small)
        return ImageInputs(width, height, cond, None, vae_pixel_values, text=request.prompt)
    source = request.image if request.image.mode == "RGB" else request.image.convert("RGB")
    height, width = edit_size(model.get_visual_tokenizer(), source.width, source.height)
    small, vae_pixel_values = condition_images(model, source.resize((width, height)), width, height)
    # The no-text and full conditions see the same image: it is cropped and resized once for both.
    no_txt = understanding_inputs(model, GENERIC_PROMPT, small)
    cond = understanding_inputs(model, EDIT_PREFIX + request.instruction.strip(), small)
    return ImageInputs(
        width, height, cond, no_txt, vae_pixel_values, text=request.instruction, source=request.image
    )


def condition_parts(model: Any) -> tuple[Any, torch.nn.Module, torch.nn.Module] | None:
    """The model's multimodal merge, its LLM and the LLM's base model, or None when one is missing."""
    merge, llm = getattr(model, "merge_multimodal", None), getattr(model, "llm", None)
    get_decoder = getattr(llm, "get_decoder", None)
    if not callable(merge) or not isinstance(llm, torch.nn.Module) or not callable(get_decoder):
        return None
    decoder = get_decoder()
    if not isinstance(decoder, torch.nn.Module) or decoder is llm:
        return None
    try:
        keywords = inspect.signature(merge).parameters
    except (TypeError, ValueError):
        return None
    if not all(name in keywords for name in MERGE_KEYWORDS):
        return None
    return merge, llm, decoder


def condition(
    model: Any,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    grid_thws: torch.Tensor,
    **kwargs: Any,
) -> dict[str, Any]:
    """One condition, {"txt": [B, L, 2 * hidden]}: the LLM's last hidden layer, then the one before, over the
    merged prompt and image; generate_condition (with `kwargs`, as the official flow) for a model without the
    parts."""
    parts = condition_parts(model)
    if parts is None:
        cond: dict[str, Any] = model.generate_condition(
            input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            grid_thws=grid_thws,
            **kwargs,
        )
        return cond
    merge, llm, decoder = parts
    _, embeddings, _, mask, _ = merge(
        text_input_ids=input_ids,
        text_attention_masks=attention_mask,
        text_labels=None,
        pixel_values=pixel_values,
        grid_thws=grid_thws,
        left_padding=True,
    )
    device = llm.device
    # No cache: one pass whose keys and values nothing reads again.
    out = decoder(
        inputs_embeds=embeddings.detach().to(device),
        attention_mask=mask.to(device),
        output_hidden_states=True,
        use_cache=False,
    )
    return {"txt": torch.cat([out.hidden_states[-1], out.hidden_states[-2]], dim=-1)}
