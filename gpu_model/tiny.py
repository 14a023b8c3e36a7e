"""The `tiny` backend: random-weight models with Ovis-U1's shapes, small enough for tests on the CPU.

Captions come from an Ovis-shaped vision-language model (`tiny_caption`), images from a diffusers SD3
pipeline (flow matching, like Ovis-U1's generator) and edits from InstructPix2Pix (text and image guidance,
like Ovis-U1's editing) (`tiny_diffusion`). Weights are drawn from a fixed seed, so every process builds the
same model and gives the same (noise) output for the same request.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_instruct_pix2pix import (
    StableDiffusionInstructPix2PixPipeline,
)
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import StableDiffusion3Pipeline
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from gpu_model.base import Backend, BackendInfo, BackendOptions
from gpu_model.errors import BackendLoadError, BackendOutOfMemory
from gpu_model.requests import CaptionRequest, EditRequest, GenerateRequest
from gpu_model.tiny_caption import IMAGE_SIZE, TinyOvisCaptioner
from gpu_model.tiny_diffusion import VAE_SCALE, build_editor, build_text_to_image, build_vae
from gpu_model.tiny_tokenizers import load_clip_tokenizer, load_qwen_tokenizer

#: Seed of the weights: the same in every process, so outputs are reproducible across workers.
WEIGHT_SEED = 0
MAX_BATCH = {"caption": 8, "generate": 4, "edit": 4}
DEFAULTS: dict[str, dict[str, Any]] = {
    "caption": {"prompt": "Describe this image in detail.", "max_new_tokens": 16},
    "generate": {"width": 64, "height": 64, "steps": 4, "txt_cfg": 5.0},
    "edit": {"steps": 4, "img_cfg": 1.5, "txt_cfg": 6.0},
}
#: Largest generated side: the MMDiT attends over every latent cell, which grows fast on the CPU.
MAX_SIDE = 512
#: Longest side of an edited image.
EDIT_MAX_SIDE = 64


@dataclass(frozen=True)
class _Models:
    captioner: TinyOvisCaptioner
    text_to_image: StableDiffusion3Pipeline
    editor: StableDiffusionInstructPix2PixPipeline


class TinyBackend(Backend):
    """Random-weight caption, text-to-image and edit models, float32, on the CPU unless told otherwise.

    Not thread-safe: the diffusers schedulers keep per-call state, so run one batch at a time.
    """

    name = "tiny"

    def __init__(self, options: BackendOptions | None = None) -> None:
        super().__init__(options)
        self._models: _Models | None = None
        self._info: BackendInfo | None = None

    def load(self) -> BackendInfo:
        """Build every model from its config with seeded random weights (well under a second)."""
        if self._info is not None:
            return self._info
        transformers_logging.set_verbosity_warning()
        diffusers_logging.set_verbosity_warning()
        device = _resolve_device(self.options.device)
        with torch.random.fork_rng(devices=[]):  # seed the weights without moving the caller's RNG
            torch.manual_seed(WEIGHT_SEED)
            captioner = TinyOvisCaptioner(load_qwen_tokenizer())
            clip_tokenizer = load_clip_tokenizer()
            vae = build_vae()
            text_to_image = build_text_to_image(clip_tokenizer, vae)
            editor = build_editor(clip_tokenizer, vae)
        captioner.to(device=device, dtype=torch.float32)
        text_to_image.to(device, torch.float32)
        editor.to(device, torch.float32)
        self._models = _Models(captioner=captioner, text_to_image=text_to_image, editor=editor)
        self._info = BackendInfo(
            name=self.name,
            device=str(device),
            max_batch={**MAX_BATCH, **self.options.max_batch},
            defaults={kind: dict(values) for kind, values in DEFAULTS.items()},
        )
        return self._info

    def warmup(self, kinds: Collection[str] | None = None) -> None:
        """Run the model of each kind in `kinds` (None: every kind) once on a tiny input."""
        grey = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (128, 128, 128))
        if kinds is None or "caption" in kinds:
            self.caption([CaptionRequest(image=grey, prompt="warm up", max_new_tokens=1)])
        if kinds is None or "generate" in kinds:
            self.generate([GenerateRequest("warm up", width=64, height=64, steps=1, seed=0, txt_cfg=2.0)])
        if kinds is None or "edit" in kinds:
            self.edit([EditRequest(grey, "warm up", steps=1, seed=0, img_cfg=1.5, txt_cfg=2.0)])

    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        """Caption the micro-batch in one left-padded `generate`; greedy at temperature 0, else seeded.
        `max_pixels` is accepted and has no effect: the vision tower takes every image at one small size."""
        for request in requests:
            if request.max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be at least 1, got {request.max_new_tokens}")
            if request.temperature < 0:
                raise ValueError(f"temperature must be 0 (greedy) or positive, got {request.temperature}")
        if not requests:
            return []
        with _out_of_memory_as_backend_error():
            return self._loaded().captioner.caption(requests)

    def generate(self, requests: list[GenerateRequest]) -> list[Image.Image]:
        """Render each prompt with its own seeded generator, so an image never depends on its batch."""
        for request in requests:
            _check_size(request.width, request.height)
            _check_steps(request.steps)
        pipeline = self._loaded().text_to_image
        images = []
        with _out_of_memory_as_backend_error():
            for request in requests:
                output = pipeline(
                    prompt=request.prompt,
                    width=request.width,
                    height=request.height,
                    num_inference_steps=request.steps,
                    guidance_scale=request.txt_cfg,
                    generator=torch.Generator().manual_seed(request.seed),
                    max_sequence_length=1,  # no T5: its zero padding would only lengthen the sequence
                )
                images.append(output.images[0].convert("RGB"))
        return images

    def edit(self, requests: list[EditRequest]) -> list[Image.Image]:
        """Edit each image with its own seeded generator; the output keeps the input's aspect ratio."""
        for request in requests:
            _check_steps(request.steps)
        pipeline = self._loaded().editor
        images = []
        with _out_of_memory_as_backend_error():
            for request in requests:
                source = request.image.convert("RGB")
                source = source.resize(edit_size(*source.size), Image.Resampling.BICUBIC)
                output = pipeline(
                    prompt=request.instruction,
                    image=source,
                    num_inference_steps=request.steps,
                    guidance_scale=request.txt_cfg,
                    image_guidance_scale=request.img_cfg,
                    generator=torch.Generator().manual_seed(request.seed),
                )
                images.append(output.images[0].convert("RGB"))
        return images

    def _loaded(self) -> _Models:
        if self._models is None:
            raise RuntimeError("TinyBackend.load() must run before the backend takes work")
        return self._models


def edit_size(width: int, height: int) -> tuple[int, int]:
    """Output size of an edit: the input's aspect ratio, longest side at most 64, sides multiples of 8."""
    scale = min(1.0, EDIT_MAX_SIDE / max(width, height))
    return (
        max(VAE_SCALE, round(width * scale / VAE_SCALE) * VAE_SCALE),
        max(VAE_SCALE, round(height * scale / VAE_SCALE) * VAE_SCALE),
    )


def _check_size(width: int, height: int) -> None:
    for side_name, side in (("width", width), ("height", height)):
        if side % VAE_SCALE or not VAE_SCALE <= side <= MAX_SIDE:
            raise ValueError(
                f"{side_name} must be a multiple of {VAE_SCALE} from {VAE_SCALE} to {MAX_SIDE}, got {side}"
            )


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")


def _resolve_device(requested: str) -> torch.device:
    """`auto` means the CPU here: the tiny models are for tests and the quick start."""
    if requested == "auto":
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise BackendLoadError(f"unknown device {requested!r}; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendLoadError(f"device {requested!r} was asked for but CUDA is not available; use 'cpu'")
    return device


_OUT_OF_MEMORY = ("out of memory", "can't allocate memory")


@contextmanager
def _out_of_memory_as_backend_error() -> Iterator[None]:
    """Turn torch's out-of-memory errors into BackendOutOfMemory so the worker splits the batch."""
    try:
        yield
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError too
        message = str(exc).lower()
        # The CPU allocator says "can't allocate memory" where CUDA says "out of memory".
        if isinstance(exc, torch.cuda.OutOfMemoryError) or any(s in message for s in _OUT_OF_MEMORY):
            raise BackendOutOfMemory(f"out of memory on a micro-batch: {exc}") from exc
        raise
