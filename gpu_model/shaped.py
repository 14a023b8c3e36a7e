"""The `ovis-u1-shaped` backend: Ovis-U1-3B's architecture at full size with random weights, for benchmarks.

Same parts, sizes and call flows as the real model (see `shaped_models`, `shaped_compute`): captions are a
vision pass, a prefill of the ~300-token prompt and greedy decoding; text-to-image is an LLM conditioning pass
per prompt, 2 DiT passes per step (conditional and unconditional) and a VAE decode; editing conditions on the
source image too and runs 3 passes per step, two of them with the source latents in the sequence. Outputs are
noise; the work is the real model's. Full size on CUDA (bf16, VAE in fp32 as the official decode); tiny
shapes on the CPU, where the same code serves the tests.

`fast=True` (the worker's default) uses the GPU fast paths: captions through `fast_decode` (static KV cache,
one CUDA graph per step, whole micro-batches), the DiT with fused QKV, the fastest SDPA kernel and regional
`torch.compile`, the unconditional condition once per size. `fast=False` runs the official scripts' way:
`generate` one caption at a time, eager DiT, every condition per item.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from gpu_model.base import Backend, BackendInfo, BackendOptions
from gpu_model.decode_kernels import fuse_norms
from gpu_model.errors import BackendLoadError
from gpu_model.fast_decode import GreedyDecoder
from gpu_model.fast_dit import (
    ConditionCache,
    GraphedCall,
    compile_blocks,
    compile_vae,
    fuse_qkv,
    pick_sdpa_backend,
    sdpa_backend,
)
from gpu_model.ovis_u1_loading import resolve_device
from gpu_model.ovis_u1_pipeline import device_work
from gpu_model.requests import CaptionRequest, EditRequest, GenerateRequest, Request
from gpu_model.shaped_defaults import (
    BLANK,
    DEFAULTS,
    GENERATE_PREFIX,
    GENERIC_PROMPT,
    MAX_BATCH,
    MAX_CAPTION_TOKENS,
    MAX_STEPS,
    TOKEN_CACHE_SIZE,
    WEIGHT_SEED,
    edit_size,
)
from gpu_model.shaped_models import FULL, TINY, ShapedConfig, ShapedDiT, VisualTokenizer, build_llm, build_vae
from gpu_model.shaped_sampling import Pass, euler, image_ids, noise, pack, schedule, unpack
from gpu_model.shaped_transfer import HostImage, PinnedStaging, to_device
from gpu_model.startup import FirstUse, startup
from gpu_model.tiny_tokenizers import (
    IM_END,
    IMAGE_PAD,
    QWEN_SPECIAL_TOKENS,
    VISION_END,
    VISION_START,
    load_qwen_tokenizer,
)

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """The loaded modules."""

    cfg: ShapedConfig
    tokenizer: Any
    llm: Any
    vision: VisualTokenizer
    table: nn.Embedding
    dit: ShapedDiT
    vae: Any
    #: len(tokenizer), which transformers recomputes on every call.
    vocab: int = 0


@dataclass(frozen=True)
class Condition:
    """A refined condition: the DiT's text tokens and pooled vector."""

    text: torch.Tensor
    pooled: torch.Tensor


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class ShapedBackend(Backend):
    """Ovis-U1-3B-sized random-weight model; see the module docstring."""

    name = "ovis-u1-shaped"

    def __init__(
        self, options: BackendOptions | None = None, *, scale: str | None = None, fast: bool = True
    ) -> None:
        super().__init__(options)
        #: "full" or "tiny"; None: full on CUDA, tiny on the CPU.
        self.scale = scale
        self.fast = fast
        #: The SDPA kernel the DiT runs with (fast path on CUDA), and the timings that chose it.
        self.attention: str | None = None
        self.attention_timings: dict[str, float | None] = {}
        self.shared = ConditionCache[Condition](size=8)
        self._tokens: dict[str, torch.Tensor] = {}
        self._staging = PinnedStaging()
        self._parts: Parts | None = None
        self._decoder: GreedyDecoder | None = None
        #: DiT passes replayed from CUDA graphs (fast path on CUDA); None: plain calls.
        self.dit_graphs: GraphedCall | None = None
        self.first_use = FirstUse("the DiT", enabled=False)
        self._info: BackendInfo | None = None

    # -- loading --------------------------------------------------------------------------------------
    def load(self) -> BackendInfo:
        """Build every part from its config with seeded random weights, on the device."""
        if self._info is not None:
            return self._info
        try:
            device = torch.device(resolve_device(self.options.device))
        except RuntimeError as exc:
            raise BackendLoadError(
                f"unknown device {self.options.device!r}; use 'cpu', 'cuda' or 'cuda:N'"
            ) from exc
        scale = self.scale or ("full" if device.type == "cuda" else "tiny")
        if scale not in DEFAULTS:
            raise BackendLoadError(f"scale must be 'full' or 'tiny', got {scale!r}")
        self.scale = scale
        cfg = FULL if scale == "full" else TINY
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        tokenizer = load_qwen_tokenizer()
        eos = tokenizer.convert_tokens_to_ids(IM_END)
        forked = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked), device:
            torch.manual_seed(WEIGHT_SEED)
            llm = build_llm(cfg, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id).to(dtype)
            vision = VisualTokenizer(cfg).to(dtype).eval()
            table = nn.Embedding(cfg.visual_vocab, cfg.llm_hidden).to(dtype)
            dit = ShapedDiT(cfg).to(dtype).eval()
            vae = build_vae(cfg)  # float32: the official decode runs in float32
        if self.fast and device.type == "cuda":
            # The fast path decodes in bf16 with channels-last convolutions (the official decode: float32).
            vae.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        self._parts = Parts(cfg, tokenizer, llm, vision, table, dit, vae, vocab=len(tokenizer))
        max_batch = {**MAX_BATCH, **self.options.max_batch}
        if self.fast:
            if device.type == "cuda":
                fuse_norms(llm)
            self._decoder = GreedyDecoder(llm, max_batch=max_batch["caption"])
            self._speed_up_dit(cfg, device)
        self._info = BackendInfo(
            name=self.name,
            device=str(device),
            max_batch=max_batch,
            defaults={kind: dict(values) for kind, values in DEFAULTS[scale].items()},
        )
        return self._info

    def _speed_up_dit(self, cfg: ShapedConfig, device: torch.device) -> None:
        dit = self.parts.dit
        fuse_qkv(dit)
        if device.type != "cuda":
            return
        head_dim = cfg.dit_hidden // cfg.dit_heads
        text = 320  # about the conditioning prompt's length
        shapes = [(1, cfg.dit_heads, 4096 + text, head_dim), (1, cfg.dit_heads, 2 * 3844 + text, head_dim)]
        self.attention, self.attention_timings = pick_sdpa_backend(shapes)
        compile_blocks([*dit.flux.transformer_blocks, *dit.flux.single_transformer_blocks])
        self.dit_graphs = GraphedCall(dit, name="ovis-u1-shaped DiT pass")
        self.first_use.enabled = True
        compile_vae(self.parts.vae)

    @property
    def parts(self) -> Parts:
        """The loaded modules (load() first)."""
        if self._parts is None:
            raise RuntimeError("ShapedBackend.load() must run before the backend takes work")
        return self._parts

    def warmup(self, kinds: Collection[str] | None = None) -> None:
        """A whole caption micro-batch at the default question and length when the worker takes captions (the
        stand-in's caption shapes are fixed, so work replays what this captures). Nothing for images: the DiT
        and the VAE compile and capture on first use at each real size (logged then), as in ovis-u1."""
        info = self.load()
        if kinds is None or "caption" in kinds:
            c, side = info.defaults["caption"], self.parts.cfg.image_size
            grey = Image.new("RGB", (side, side), (128, 128, 128))
            caption = CaptionRequest(grey, c["prompt"], c["max_new_tokens"])
            startup.phase(log, "warming up captions (CUDA initialisation, compiles, decode graph capture)")
            self.caption([caption] * (info.max_batch["caption"] if self.fast else 1))

    # -- captions -------------------------------------------------------------------------------------
    def prepare(self, request: Request) -> Request:
        """A caption's image as the vision tower's uint8 array, made on an I/O thread."""
        if isinstance(request, CaptionRequest) and self._parts is not None:
            return replace(request, prepared=self._array(request.image))
        return request

    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        """Greedy rows of the micro-batch decoded together; sampled rows one by one with their seed."""
        for r in requests:
            _check(bool(r.prompt.strip()), "the caption prompt is empty")
            _check(
                1 <= r.max_new_tokens <= MAX_CAPTION_TOKENS, f"max_new_tokens must be 1..{MAX_CAPTION_TOKENS}"
            )
            _check(r.temperature >= 0, f"temperature must be >= 0, got {r.temperature}")
        captions = [""] * len(requests)
        with device_work("caption", len(requests)):
            greedy = [i for i, r in enumerate(requests) if r.temperature == 0]
            step = self._decoder.max_batch if self._decoder is not None else max(1, len(greedy))
            for start in range(0, len(greedy), step):
                rows = greedy[start : start + step]
                for i, text in zip(rows, self._caption_greedy([requests[i] for i in rows]), strict=True):
                    captions[i] = text
            for i, r in enumerate(requests):
                if r.temperature > 0:
                    captions[i] = self._caption_sampled(r)
        return captions

    def caption_tokens(self, requests: list[CaptionRequest]) -> torch.Tensor:
        """The greedy new-token ids of a micro-batch (CPU, pad after each row's end), for benchmarks."""
        with device_work("caption", len(requests)):
            return self._greedy_tokens(requests)

    def _greedy_tokens(self, requests: list[CaptionRequest]) -> torch.Tensor:
        p = self.parts
        ids, mask = self._tokenize([self._prompt(r.prompt, answer=True) for r in requests])
        embeds = self._embed(ids, self._caption_pixels(requests))
        limits = [r.max_new_tokens for r in requests]
        pad = p.tokenizer.pad_token_id
        eos = p.llm.generation_config.eos_token_id
        if self._decoder is not None:
            return self._decoder.generate(embeds, mask, limits, eos_token_id=eos, pad_token_id=pad)
        out = torch.full((len(requests), max(limits)), pad, dtype=torch.long)
        for k, limit in enumerate(limits):  # the official scripts: one generate() per item
            real = mask[k].bool()
            row = p.llm.generate(
                inputs_embeds=embeds[k : k + 1, real],
                attention_mask=mask[k : k + 1, real],
                max_new_tokens=limit,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )[0]
            out[k, : len(row)] = row.cpu()
        return out

    def _caption_greedy(self, requests: list[CaptionRequest]) -> list[str]:
        tokens = self._greedy_tokens(requests)
        return [self._text(row, r.max_new_tokens) for row, r in zip(tokens, requests, strict=True)]

    def _caption_sampled(self, request: CaptionRequest) -> str:
        p = self.parts
        ids, mask = self._tokenize([self._prompt(request.prompt, answer=True)])
        embeds = self._embed(ids, self._caption_pixels([request]))
        torch.manual_seed(request.seed)
        row = p.llm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=request.max_new_tokens,
            do_sample=True,
            temperature=request.temperature,
            top_k=None,
            top_p=None,
            pad_token_id=p.tokenizer.pad_token_id,
        )[0]
        return self._text(row.cpu(), request.max_new_tokens)

    def _text(self, row: torch.Tensor, limit: int) -> str:
        """Decode a row up to its EOS. The LLM's vocabulary is Qwen3's, the stand-in tokenizer's is tiny: ids
        wrap around it (the text is noise either way)."""
        tok = self.parts.tokenizer
        eos = self.parts.llm.generation_config.eos_token_id
        tokens = row[:limit].tolist()
        if eos in tokens:
            tokens = tokens[: tokens.index(eos)]
        vocab = self.parts.vocab
        text: str = tok.decode([t % vocab for t in tokens], skip_special_tokens=True)
        return "".join(ch for ch in text if ch.isprintable()).strip()

    # -- shared pieces -----------------------------------------------------------------------------------
    def _prompt(self, prompt: str, *, answer: bool) -> str:
        """The chat prompt with the image's visual-token placeholders; `answer` adds the assistant turn with
        an empty think block (understanding), else it ends after the user turn (generation conditions)."""
        for token in QWEN_SPECIAL_TOKENS:
            prompt = prompt.replace(token, "")
        content = f"{VISION_START}{IMAGE_PAD}{VISION_END}\n{prompt}"
        text = self.parts.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            tokenize=False,
            add_generation_prompt=answer,
            enable_thinking=False,
        )
        return str(text).replace(IMAGE_PAD, IMAGE_PAD * self.parts.cfg.visual_tokens)

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and mask; each distinct text is tokenized once (a micro-batch of captions usually
        shares one question, and 256 image placeholders make tokenizing it slow)."""
        rows = [self._token_ids(text) for text in texts]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.parts.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, row in enumerate(rows):
            ids[k, width - len(row) :] = row
            mask[k, width - len(row) :] = 1
        device = self.parts.table.weight.device
        return to_device(ids, device), to_device(mask, device)

    def _token_ids(self, text: str) -> torch.Tensor:
        cached = self._tokens.get(text)
        if cached is None:
            cached = torch.tensor(self.parts.tokenizer(text).input_ids, dtype=torch.long)
            if len(self._tokens) >= TOKEN_CACHE_SIZE:
                self._tokens.pop(next(iter(self._tokens)))
            self._tokens[text] = cached
        return cached

    def _array(self, image: Image.Image) -> np.ndarray:
        """An image at the vision tower's size as a [side, side, 3] uint8 array. A caption's `max_pixels` is
        met as it is: the side is 448 at full size, the real model's smallest resize and the floor of any cap
        (tiny shapes are smaller still), so no cap lowers the tower's input."""
        side = self.parts.cfg.image_size
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if rgb.size != (side, side):
            rgb = rgb.resize((side, side), Image.Resampling.BICUBIC)
        return np.asarray(rgb)

    def _caption_pixels(self, requests: list[CaptionRequest]) -> torch.Tensor:
        """The requests' images (prepared on I/O threads where they were) for the vision tower."""
        arrays = [
            r.prepared if isinstance(r.prepared, np.ndarray) else self._array(r.image) for r in requests
        ]
        return self._pixels(arrays, staged=True)

    def _pixels(self, arrays: list[np.ndarray], *, staged: bool = False) -> torch.Tensor:
        """[side, side, 3] uint8 arrays as one batch normalised to [-1, 1] on the device; `staged`: through
        the pinned staging buffer on a GPU (caption micro-batches; not per-item conditions, which must not
        wait for an earlier copy)."""
        weight = self.parts.table.weight
        if staged and weight.is_cuda:
            batch = self._staging.upload(arrays, weight.device)
        else:
            batch = to_device(torch.from_numpy(np.stack(arrays)), weight.device)
        return batch.permute(0, 3, 1, 2).to(weight.dtype) / 127.5 - 1.0

    def _embed(self, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Text embeddings with the visual embeddings at the image placeholders."""
        p = self.parts
        text = p.llm.get_input_embeddings()(ids)
        visual = p.vision(pixels) @ p.table.weight
        placeholders = ids == p.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        embeds: torch.Tensor = text.masked_scatter(placeholders[..., None], visual.to(text.dtype))
        return embeds

    def _condition(self, prompt: str, image: Image.Image) -> Condition:
        """The LLM's last two hidden layers over prompt and image, through the DiT's token refiner."""
        p = self.parts
        ids, _ = self._tokenize([self._prompt(prompt, answer=False)])
        out = p.llm.model(
            inputs_embeds=self._embed(ids, self._pixels([self._array(image)])),
            # One unpadded row: no mask, as the LLM would drop an all-ones one after checking it on the host.
            attention_mask=None,
            output_hidden_states=True,
            use_cache=False,
        )
        states = torch.cat([out.hidden_states[-2], out.hidden_states[-1]], dim=-1)
        text, pooled = p.dit.refiner(states)
        return Condition(text, pooled)

    def _unconditional(self, width: int, height: int) -> Condition:
        """The generic prompt on a blank image: shared by every item of a size on the fast path."""
        blank = Image.new("RGB", (width, height), BLANK)
        if not self.fast:
            return self._condition(GENERIC_PROMPT, blank)
        return self.shared.get(
            (GENERIC_PROMPT, width, height), lambda: self._condition(GENERIC_PROMPT, blank)
        )

    def _pass(self, condition: Condition, ids: torch.Tensor, source: torch.Tensor | None = None) -> Pass:
        rope = self.parts.dit.rope(condition.text.shape[1], ids)
        return Pass(condition.text, condition.pooled, rope, source)

    def _velocity(self, image: torch.Tensor, p: Pass, t: torch.Tensor) -> torch.Tensor:
        dit = self.dit_graphs or self.parts.dit
        velocity: torch.Tensor = dit(image, p.text, p.pooled, t, p.rope)
        return velocity

    def _sample(self, x: torch.Tensor, passes: list[Pass], combine: Any, steps: int) -> torch.Tensor:
        with sdpa_backend(self.attention if self.fast else None):
            return euler(x, passes, combine, schedule(steps, x.shape[1]), self._velocity)

    def _image(self, x: torch.Tensor, width: int, height: int) -> HostImage:
        """VAE decode (float32 as the official code, bf16 on the fast path); one queued copy to the host."""
        vae = self.parts.vae
        latents = unpack(x.float(), height, width) / vae.config.scaling_factor + vae.config.shift_factor
        latents = latents.to(vae.dtype, memory_format=torch.channels_last)
        pixels = vae.decode(latents).sample[0].float()
        return HostImage((127.5 * (pixels.clamp(-1, 1) + 1.0)).to(torch.uint8).permute(1, 2, 0).contiguous())

    def _noise(self, seed: int, width: int, height: int) -> torch.Tensor:
        """Yak's bf16 starting noise, in the DiT's dtype (bf16 on CUDA; float32 on the CPU)."""
        weight = self.parts.table.weight
        x = noise(seed, height, width, channels=self.parts.cfg.latent_channels, device=weight.device)
        return x.to(weight.dtype)

    def _source_latents(self, image: Image.Image, seed: int) -> torch.Tensor:
        vae = self.parts.vae
        device = vae.device
        array = to_device(torch.from_numpy(np.array(image)), device)
        pixels = (array.permute(2, 0, 1)[None].float() / 127.5 - 1.0).to(vae.dtype)
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        generator = torch.Generator(device=device).manual_seed(seed)
        latents = vae.encode(pixels).latent_dist.sample(generator=generator)
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        return pack(latents).to(self.parts.table.weight.dtype)

    # -- images -------------------------------------------------------------------------------------------
    def generate(self, requests: list[GenerateRequest]) -> list[Image.Image]:
        """Text-to-image, one item at a time with its own seed (the DiT is compute-bound at batch 1): every
        item is queued before the first image is copied back."""
        for r in requests:
            for name, side in (("width", r.width), ("height", r.height)):
                _check(side % 16 == 0 and 64 <= side <= 2048, f"{name} must be a multiple of 16 in 64..2048")
            _check(bool(r.prompt.strip()), "the prompt is empty")
            _check(1 <= r.steps <= MAX_STEPS, f"steps must be within 1..{MAX_STEPS}")
        with (
            device_work("generate", len(requests)),
            self.first_use(f"{r.width}x{r.height}" for r in requests),
        ):
            queued = [self._generate_one(r) for r in requests]
            return [image.image() for image in queued]

    def _generate_one(self, r: GenerateRequest) -> HostImage:
        device = self.parts.table.weight.device
        blank = Image.new("RGB", (r.width, r.height), BLANK)
        cond = self._condition(f"{GENERATE_PREFIX}{r.prompt}", blank)
        uncond = self._unconditional(r.width, r.height)
        ids = image_ids(r.height, r.width, frame=0, device=device)
        x = self._noise(r.seed, r.width, r.height)
        cfg = r.txt_cfg
        passes = [self._pass(cond, ids), self._pass(uncond, ids)]
        x = self._sample(x, passes, lambda v: v[1] + cfg * (v[0] - v[1]), r.steps)
        return self._image(x, r.width, r.height)

    def edit(self, requests: list[EditRequest]) -> list[Image.Image]:
        """Instruction editing, one item at a time, all queued before the first image is copied back; the
        output keeps the input's aspect, ~1 MP at most."""
        for r in requests:
            _check(min(r.image.size) > 0, "the input image is empty")
            _check(bool(r.instruction.strip()), "the instruction is empty")
            _check(1 <= r.steps <= MAX_STEPS, f"steps must be within 1..{MAX_STEPS}")
        sizes = (edit_size(*r.image.size) for r in requests)
        with device_work("edit", len(requests)), self.first_use(f"{w}x{h} edits" for w, h in sizes):
            queued = [self._edit_one(r) for r in requests]
            return [image.image() for image in queued]

    def _edit_one(self, r: EditRequest) -> HostImage:
        device = self.parts.table.weight.device
        source = r.image if r.image.mode == "RGB" else r.image.convert("RGB")
        width, height = edit_size(*source.size)
        source = source.resize((width, height), Image.Resampling.BICUBIC)
        latents = self._source_latents(source, r.seed)
        no_both = self._unconditional(width, height)
        no_text = self._condition(GENERIC_PROMPT, source)
        cond = self._condition(r.instruction.strip(), source)
        ids = image_ids(height, width, frame=0, device=device)
        both = torch.cat([ids, image_ids(height, width, frame=1, device=device)])
        x = self._noise(r.seed, width, height)
        img_cfg, txt_cfg = r.img_cfg, r.txt_cfg
        # Yak's edit: the unconditional pass runs without the source latents, the other two with them.
        passes = [
            self._pass(cond, both, latents),
            self._pass(no_both, ids),
            self._pass(no_text, both, latents),
        ]

        def combine(v: list[torch.Tensor]) -> torch.Tensor:
            return v[1] + img_cfg * (v[2] - v[1]) + txt_cfg * (v[0] - v[2])

        x = self._sample(x, passes, combine, r.steps)
        return self._image(x, width, height)
