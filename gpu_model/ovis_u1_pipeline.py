"""The official Ovis-U1 call flows over a loaded remote-code model, batch-first where the model allows.

Captions: one left-padded generate() per micro-batch. Images: one item at a time, because the remote code's
batched generate_img draws the whole batch's noise from one generator and lets the DiT attend to the text
padding, so a batched item would not reproduce its own seed.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from PIL import Image

from gpu_model import ovis_u1_conditions as conditions
from gpu_model import ovis_u1_sampling as sampling
from gpu_model.caption_stats import CaptionStats, CaptionTimer
from gpu_model.decode_kernels import fuse_norms
from gpu_model.errors import BackendError, BackendOutOfMemory
from gpu_model.fast_decode import GreedyDecoder
from gpu_model.fast_dit import GraphedCall, compile_blocks, compile_vae
from gpu_model.ovis_u1 import UNDERSTANDING_PREFIX
from gpu_model.requests import CaptionRequest, EditRequest, GenerateRequest
from gpu_model.tokenizer_lock import guard_tokenizer

#: Unconditional conditions kept per output size (each a [1, L, 2 * hidden] tensor, a few MB).
NO_BOTH_CACHE_SIZES = 8
#: Padded tokens of one greedy caption call: rows x (longest prompt + most new tokens). The decoder's KV cache
#: and the prefill's work both follow it, so a micro-batch of photos of mixed sizes is split, shortest prompts
#: first, into calls of similar length instead of padding every row to the largest photo (a 1280 px photo
#: gives about 2,000 visual tokens, a 448 px one 256).
CAPTION_TOKEN_BUDGET = 256 * 1024
#: What the official image scripts pass as text-generation keys beside the image ones.
CONDITION_MAX_NEW_TOKENS = 1024
_GREEDY: dict[str, Any] = {
    "do_sample": False,
    "top_p": None,
    "top_k": None,
    "temperature": None,
    "repetition_penalty": None,
}


@contextlib.contextmanager
def device_work(kind: str, size: int) -> Iterator[None]:
    """inference_mode; CUDA out of memory becomes BackendOutOfMemory (the worker splits the batch)."""
    try:
        with torch.inference_mode():
            yield
    except torch.OutOfMemoryError as exc:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise BackendOutOfMemory(f"CUDA out of memory on a {kind} micro-batch of {size}: {exc}") from exc


log = logging.getLogger(__name__)


class CaptionInputs(NamedTuple):
    """One caption's model inputs, as the remote code's preprocess_inputs returns them."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor
    grid_thws: torch.Tensor


def _seed_everything(seed: int) -> None:
    # torch.manual_seed seeds the CPU and every CUDA device: the editing path VAE-encodes the source image
    # by sampling torch's global RNG, not the `seed` handed to generate_img.
    torch.manual_seed(seed)


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def prompt_tokens(row: CaptionInputs) -> int:
    """A caption prompt's length once its image is merged in: its text ids and its visual tokens (a grid of
    t x h x w patches gives t*h*w/4 tokens, 2x2 patches merged into one)."""
    return len(row.input_ids) + int(row.grid_thws.prod(dim=-1).sum()) // 4


def caption_groups(rows: list[CaptionInputs], limits: list[int], budget: int) -> list[list[int]]:
    """Indices of `rows` in calls of similar length: sorted by prompt length (then limit), each call holding
    as many rows as fit `budget` padded tokens (rows x (longest prompt + most new tokens)), at least one."""
    lengths = [prompt_tokens(row) for row in rows]
    groups: list[list[int]] = []
    group: list[int] = []
    longest = most = 0
    for k in sorted(range(len(rows)), key=lambda k: (lengths[k], limits[k])):
        grown_longest, grown_most = max(longest, lengths[k]), max(most, limits[k])
        if group and (len(group) + 1) * (grown_longest + grown_most) > budget:
            groups.append(group)
            group, grown_longest, grown_most = [], lengths[k], limits[k]
        group.append(k)
        longest, most = grown_longest, grown_most
    if group:
        groups.append(group)
    return groups


def generator_blocks(model: Any) -> list[torch.nn.Module]:
    """The repeated transformer blocks of the visual generator's backbone (its top-level block lists)."""
    backbone = getattr(getattr(model, "visual_generator", None), "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        return []
    return [
        block for child in backbone.children() if isinstance(child, torch.nn.ModuleList) for block in child
    ]


class OvisU1Pipeline:
    """Runs caption, generate and edit micro-batches on a loaded model."""

    def __init__(
        self,
        model: Any,
        *,
        device: str,
        dtype_name: str,
        fast_decode: bool | None = None,
        max_batch: int = 64,
        token_budget: int = CAPTION_TOKEN_BUDGET,
    ) -> None:
        self.model = model
        self.token_budget = token_budget
        self.caption_stats = CaptionStats()
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype_name)
        self.text_tokenizer = model.get_text_tokenizer()
        self.visual_tokenizer = model.get_visual_tokenizer()
        self._no_both: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()
        # Captions are prepared on the worker's I/O threads, in parallel: only the shared tokenizer's backend
        # is used under a lock.
        guard_tokenizer(self.text_tokenizer)
        #: Greedy captions through a static KV cache and a captured CUDA graph per step (on CUDA by
        #: default), in place of the LLM's stock generate loop, which is bound by per-step host overhead.
        self.decoder: GreedyDecoder | None = None
        llm = getattr(model, "llm", None)
        wanted = self.device.type == "cuda" if fast_decode is None else fast_decode
        if wanted and isinstance(llm, torch.nn.Module) and hasattr(llm, "generate"):
            if self.device.type == "cuda":
                fuse_norms(llm)
            self.decoder = GreedyDecoder(llm, max_batch=max_batch)
        #: On CUDA the generator's transformer blocks are compiled one by one ("regional" compilation: the
        #: repeated blocks share graphs), the part of generation and editing that is bound by kernels.
        self.compiled_blocks = 0
        #: Each pass of the generator's backbone replayed from a CUDA graph per shape (on CUDA).
        self.dit_graphs: GraphedCall | None = None
        if self.device.type == "cuda":
            self.compiled_blocks = compile_blocks(generator_blocks(model))
            generator = getattr(model, "visual_generator", None)
            compile_vae(getattr(generator, "vae", None))
            backbone = getattr(generator, "backbone", None)
            if isinstance(backbone, torch.nn.Module):
                self.dit_graphs = GraphedCall(backbone.forward, name="Ovis-U1 DiT pass")
                backbone.forward = self.dit_graphs

    # -- captions -------------------------------------------------------------------------------------

    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        """Greedy rows share one generate(); sampled rows run alone, seeded, so each reproduces itself."""
        captions: list[str] = [""] * len(requests)
        greedy = [i for i, r in enumerate(requests) if r.temperature == 0]
        with device_work("caption", len(requests)):
            if greedy:
                rows = [self._prepared(requests[i]) for i in greedy]
                limits = [requests[i].max_new_tokens for i in greedy]
                for group in caption_groups(rows, limits, self.token_budget):
                    texts = self._caption_batch(
                        [requests[greedy[k]] for k in group], sampling=_GREEDY, rows=[rows[k] for k in group]
                    )
                    for k, text in zip(group, texts, strict=True):
                        captions[greedy[k]] = text
            for i, request in enumerate(requests):
                if request.temperature > 0:
                    _seed_everything(request.seed)
                    sampling = dict(_GREEDY, do_sample=True, temperature=request.temperature)
                    captions[i] = self._caption_batch([request], sampling=sampling)[0]
        return captions

    def prepare_caption(self, request: CaptionRequest) -> CaptionRequest:
        """The request with its model inputs made ahead (on an I/O thread, off the model's); unchanged if
        preprocessing fails, so that the batch reports the error for this item alone."""
        try:
            inputs = self._caption_inputs(request)
        except Exception:
            log.debug("caption preprocessing failed ahead of the model", exc_info=True)
            return request
        return replace(request, prepared=inputs)

    def _caption_inputs(self, request: CaptionRequest) -> CaptionInputs:
        # The remote code's own resize takes the cap (smaller images, fewer visual tokens); unset, the call
        # is the official script's.
        cap = {"max_pixels": request.max_pixels} if request.max_pixels is not None else {}
        _, input_ids, pixel_values, grid_thws = self.model.preprocess_inputs(
            UNDERSTANDING_PREFIX + request.prompt,
            [_to_rgb(request.image)],
            generation_preface="",
            return_labels=False,
            propagate_exception=False,
            multimodal_type="single_image",
            fix_sample_overall_length_navit=False,
            **cap,
        )
        return CaptionInputs(input_ids, pixel_values, grid_thws)

    def _prepared(self, request: CaptionRequest) -> CaptionInputs:
        """The request's model inputs: made ahead on an I/O thread, else now."""
        prepared = request.prepared
        return prepared if isinstance(prepared, CaptionInputs) else self._caption_inputs(request)

    def _caption_batch(
        self,
        requests: list[CaptionRequest],
        *,
        sampling: dict[str, Any],
        rows: list[CaptionInputs] | None = None,
    ) -> list[str]:
        tok = self.text_tokenizer
        rows = rows if rows is not None else [self._prepared(r) for r in requests]
        # Left padding keeps every row's last prompt token at the end, where generation continues.
        length = max(len(ids) for ids, _, _ in rows)
        input_ids = torch.full((len(rows), length), tok.pad_token_id, dtype=torch.long)
        for k, (ids, _, _) in enumerate(rows):
            input_ids[k, length - len(ids) :] = ids
        attention_mask = input_ids != tok.pad_token_id
        vt_device = self.visual_tokenizer.device
        pixel_values = torch.cat([pv for _, pv, _ in rows]).to(device=vt_device, dtype=self.dtype)
        grid_thws = torch.cat([grid for _, _, grid in rows]).to(device=vt_device)
        limits = [r.max_new_tokens for r in requests]
        fast = self.decoder is not None and not sampling.get("do_sample")
        timer = CaptionTimer(self.caption_stats, self.device)
        with (
            timer.call([prompt_tokens(row) for row in rows]),
            self._fast_llm_generate(limits, timer) if fast else contextlib.nullcontext(),
        ):
            output_ids = self.model.generate(
                input_ids.to(self.device),
                pixel_values=pixel_values,
                attention_mask=attention_mask.to(self.device),
                grid_thws=grid_thws,
                max_new_tokens=max(limits),
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                use_cache=True,
                **sampling,
            )
        return [self._decode(row, limit) for row, limit in zip(output_ids, limits, strict=True)]

    @contextlib.contextmanager
    def _fast_llm_generate(self, limits: list[int], timer: CaptionTimer) -> Iterator[None]:
        """Let the model's own generate() merge text and image as it always does, then decode the merged
        embeddings with the fast greedy decoder instead of the LLM's stock loop."""
        llm, decoder = self.model.llm, self.decoder
        assert decoder is not None

        def generate(
            inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any
        ) -> torch.Tensor:
            timer.decoding()
            tokens = decoder.generate(
                inputs_embeds,
                attention_mask,
                limits,
                eos_token_id=kwargs.get("eos_token_id"),
                pad_token_id=int(kwargs["pad_token_id"]),
            )
            return tokens.to(inputs_embeds.device)

        llm.generate = lambda inputs=None, **kwargs: generate(**kwargs)
        try:
            yield
        finally:
            del llm.generate  # the class's generate shows through again

    def _decode(self, new_tokens: torch.Tensor, limit: int) -> str:
        tokens = new_tokens[:limit].tolist()
        eos = self.text_tokenizer.eos_token_id
        if eos in tokens:
            tokens = tokens[: tokens.index(eos)]
        text: str = self.text_tokenizer.decode(tokens, skip_special_tokens=True)
        return text.strip()

    # -- images ---------------------------------------------------------------------------------------

    def generate(self, requests: list[GenerateRequest]) -> list[Image.Image]:
        """Text-to-image, one item at a time, as test_txt_to_img.py."""
        images = []
        with device_work("generate", len(requests)):
            for request in requests:
                width, height = request.width, request.height
                kwargs = self._image_kwargs(width, height, request.steps, request.seed, 0.0, request.txt_cfg)
                no_both = self._no_both_condition(width, height, kwargs)
                inputs = self._image_inputs(request)
                # The model's generate_img VAE-encodes a text-to-image condition's pixels and never uses
                # them; the project's loop does not read them: they cross to the device for the former only.
                unread = sampling.sampler_for(self.model) is not None
                vae_pixels = None if unread else inputs.vae_pixel_values
                cond = self._condition(inputs.cond, kwargs, vae_pixel_values=vae_pixels)
                images.append(self._sample(cond, no_both, None, kwargs, request.seed, (width, height)))
        return images

    def edit(self, requests: list[EditRequest]) -> list[Image.Image]:
        """Instruction editing, one item at a time, as test_img_edit.py."""
        images = []
        with device_work("edit", len(requests)):
            for request in requests:
                height, width = self.edit_size(*request.image.size)
                kwargs = self._image_kwargs(
                    width, height, request.steps, request.seed, request.img_cfg, request.txt_cfg
                )
                no_both = self._no_both_condition(width, height, kwargs)
                inputs = self._image_inputs(request)
                assert inputs.no_txt is not None
                no_txt = self._condition(inputs.no_txt, kwargs)
                cond = self._condition(inputs.cond, kwargs, vae_pixel_values=inputs.vae_pixel_values)
                images.append(self._sample(cond, no_both, no_txt, kwargs, request.seed, (width, height)))
        return images

    def edit_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of an edit's output: the input's aspect, sides multiples of 32, ~1 MP at most."""
        return conditions.edit_size(self.visual_tokenizer, width, height)

    def prepare_image(self, request: GenerateRequest | EditRequest) -> GenerateRequest | EditRequest:
        """The request with its host work done ahead (on an I/O thread, off the model's); unchanged if that
        fails, so that the batch does it and reports the error for this item alone."""
        try:
            inputs = conditions.image_inputs(self.model, request)
        except Exception:
            log.debug("image preprocessing failed ahead of the model", exc_info=True)
            return request
        return replace(request, prepared=inputs)

    def _image_kwargs(
        self, width: int, height: int, steps: int, seed: int, img_cfg: float, txt_cfg: float
    ) -> dict[str, Any]:
        tok = self.text_tokenizer
        return {
            "max_new_tokens": CONDITION_MAX_NEW_TOKENS,
            **_GREEDY,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "use_cache": True,
            "height": height,
            "width": width,
            "num_steps": steps,
            "seed": seed,
            "img_cfg": img_cfg,
            "txt_cfg": txt_cfg,
        }

    def _image_inputs(self, request: GenerateRequest | EditRequest) -> conditions.ImageInputs:
        """The request's host work: done ahead on an I/O thread, else now."""
        prepared = request.prepared
        if isinstance(prepared, conditions.ImageInputs) and prepared.serves(request):
            return prepared
        return conditions.image_inputs(self.model, request)

    def _condition(
        self,
        inputs: conditions.ConditionInputs,
        kwargs: dict[str, Any],
        *,
        vae_pixel_values: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """One condition on the device (ovis_u1_conditions); the full one also carries the VAE pixels."""
        input_ids, vt_device = inputs.input_ids, self.visual_tokenizer.device
        cond = conditions.condition(
            self.model,
            input_ids.unsqueeze(0).to(self.device),
            attention_mask=(input_ids != self.text_tokenizer.pad_token_id).unsqueeze(0).to(self.device),
            pixel_values=inputs.pixel_values.to(device=vt_device, dtype=self.dtype),
            grid_thws=inputs.grid_thws.to(device=vt_device),
            **kwargs,
        )
        if vae_pixel_values is not None:
            cond["vae_pixel_values"] = vae_pixel_values.unsqueeze(0).to(self.device)
        return cond

    def _no_both_condition(self, width: int, height: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The generic prompt on a blank image of the output size: the same for every item of that size."""
        key = (width, height)
        if key in self._no_both:
            self._no_both.move_to_end(key)
            return self._no_both[key]
        cond = self._condition(conditions.unconditional_inputs(self.model, width, height), kwargs)
        self._no_both[key] = cond
        if len(self._no_both) > NO_BOTH_CACHE_SIZES:
            self._no_both.popitem(last=False)
        return cond

    def _sample(
        self,
        cond: dict[str, Any],
        no_both: dict[str, Any],
        no_txt: dict[str, Any] | None,
        kwargs: dict[str, Any],
        seed: int,
        size: tuple[int, int],
    ) -> Image.Image:
        """One image from its conditions: the project's loop over the generator's own parts, which gives
        what generate_img gives without its host syncs (ovis_u1_sampling); generate_img itself for a
        generator that lacks one of those parts."""
        from gpu_model.ovis_u1_sampling import sampler_for

        _seed_everything(seed)
        sampler = sampler_for(self.model)
        with self._sampling_autocast():
            if sampler is None:
                images = self.model.generate_img(
                    cond=cond, no_both_cond=no_both, no_txt_cond=no_txt, **kwargs
                )
            else:
                images = [
                    sampler.sample(
                        cond,
                        no_both,
                        no_txt,
                        height=kwargs["height"],
                        width=kwargs["width"],
                        steps=kwargs["num_steps"],
                        seed=seed,
                        img_cfg=kwargs["img_cfg"],
                        txt_cfg=kwargs["txt_cfg"],
                    )
                ]
        if len(images) != 1:
            raise BackendError(f"generate_img returned {len(images)} images for one condition")
        image = _to_rgb(images[0])
        if image.size != size:
            raise BackendError(f"the sampler returned a {image.size} image, {size} was asked for")
        return image

    @contextlib.contextmanager
    def _sampling_autocast(self) -> Iterator[None]:
        """The official path on CUDA. On the CPU, a bf16 autocast around generate_img (see below)."""
        if self.device.type != "cpu":
            yield
            return
        # generate_img draws its noise in bf16, concatenates the (fp32, see load_model) source latents with
        # it, and decodes under torch.autocast(float32), which the CPU refuses with a warning and skips.
        # A bf16 CPU autocast reconciles the dtypes; the VAE decode then runs in fp32, as intended.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="In CPU autocast, but the target dtype is not supported"
            )
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
