"""Greedy batched decoding for Hugging Face causal LMs: a static KV cache and one CUDA graph per decode step.

Stock `generate` is bound by host time per decode step (Python and one launch per kernel) whatever the
batch, so large batches barely help. Here the prompt (as `inputs_embeds`, so multimodal models work) is
prefilled once into a preallocated `StaticCache`; each later step (model forward, argmax, EOS and per-row
limits, state advance) is captured once as a CUDA graph and replayed, with no host sync inside the loop but a
check every `check_every` steps for an early stop. On the CPU the same step runs eagerly, which is what the
unit tests compare against `generate`.

Rows that end early do not hold the batch: at each check, once the rows still running fit a batch half the
size or less, they are moved to the front of the cache and decoding goes on at that smaller batch (its own
graph), so a decode step's cost (it reads every row's whole KV cache) follows the rows still running, not the
longest caption. Every shape shares one KV arena, sized by the largest batch and length seen.

Works on any causal LM whose forward takes `inputs_embeds`, `attention_mask`, `position_ids`,
`cache_position` and a `StaticCache` (Llama, Qwen2/3 and their relatives in transformers 4.4x/4.5x). Decode
steps attend with a grouped-query kernel that reads each KV head once (fused SDPA or two batched matrix
products: at capture both are timed and the faster graph kept), registered as an attention implementation for
the duration of a call; prompts keep the model's own SDPA path (gpu_model/decode_kernels.py).

bench/gpu_throughput.py records the time of one replayed step at batch 1 and at its largest batch
(`fast_backend.decode_attention_ms_per_step`).
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gpu_model.decode_kernels import VARIANTS, decode_attention_enabled

log = logging.getLogger(__name__)

#: Cache lengths are rounded up to this many positions, so nearby prompt lengths share a graph.
LENGTH_BUCKET = 128
#: Batches above this many rows are rounded up to a multiple of it (below, to a power of two).
ROW_STEP = 16
#: Most end-of-sequence ids a call may name (the graph reads them from a fixed buffer).
MAX_EOS_IDS = 8
#: Graph replays timed per decode-attention variant when the decoder picks one ("auto").
TIMED_REPLAYS = 6


@dataclass
class _Slot:
    """Static buffers of one (batch, cache length) shape over the shared KV arena; the captured graph reads
    and advances them."""

    batch: int
    length: int
    cache: Any
    #: 2-D attention mask over the whole cache: the prompt's (left padding 0) then 1 for generated slots.
    mask: torch.Tensor
    ids: torch.Tensor
    positions: torch.Tensor
    cache_position: torch.Tensor
    step: torch.Tensor
    limits: torch.Tensor
    finished: torch.Tensor
    tokens: torch.Tensor
    #: End-of-sequence ids (unused entries -1) and the pad id, as device tensors the graph reads.
    eos: torch.Tensor
    pad: torch.Tensor
    graph: Any = None
    #: The decode attention the graph was captured with.
    variant: str | None = None

    def state(self) -> list[torch.Tensor]:
        return [self.ids, self.positions, self.cache_position, self.step, self.finished, self.tokens]


class _Arena:
    """The KV cache storage all shapes share: per layer, one flat buffer for keys and one for values.

    A shape's cache is the buffer's prefix viewed as [rows, kv heads, length, head dim] (contiguous), so its
    size is what its rows and length need, not the largest rows times the largest length seen; a smaller batch
    of the same length is the first rows of the larger one, so dropping rows that ended is a copy within one
    buffer."""

    def __init__(self, config: Any, rows: int, length: int, device: torch.device, dtype: torch.dtype) -> None:
        self.config, self.dtype = config, dtype
        self.heads = config.num_key_value_heads or config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.elements = self.need(rows, length)
        layers = config.num_hidden_layers
        self.keys = [torch.zeros(self.elements, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(self.elements, dtype=dtype, device=device) for _ in range(layers)]

    def need(self, rows: int, length: int) -> int:
        """Elements per layer and tensor of a (rows, length) cache."""
        return rows * self.heads * length * self.head_dim

    def fits(self, rows: int, length: int) -> bool:
        return self.need(rows, length) <= self.elements

    def _view(self, flat: torch.Tensor, rows: int, length: int) -> torch.Tensor:
        return flat[: self.need(rows, length)].view(rows, self.heads, length, self.head_dim)

    def cache(self, rows: int, length: int) -> Any:
        """A StaticCache whose tensors are views of this arena (it allocates nothing itself)."""
        from transformers.cache_utils import StaticCache

        cache = StaticCache(
            config=self.config, max_batch_size=rows, max_cache_len=length, device="meta", dtype=self.dtype
        )
        cache.key_cache = [self._view(k, rows, length) for k in self.keys]
        cache.value_cache = [self._view(v, rows, length) for v in self.values]
        return cache

    def repeat_first(self, batch: int, rows: int, length: int) -> None:
        """In a (rows, length) cache with its first `batch` rows filled, make each later row copy row 0."""
        for flat in (*self.keys, *self.values):
            view = self._view(flat, rows, length)
            view[batch:].copy_(view[:1].expand(rows - batch, -1, -1, -1))

    def gather(self, rows: torch.Tensor, batch: int, length: int) -> None:
        """Move the given rows of a (batch, length) cache, in order, to the front: the first len(rows) rows
        are then the cache of that smaller batch of the same length."""
        for flat in (*self.keys, *self.values):
            view = self._view(flat, batch, length)
            view[: len(rows)].copy_(view[rows])


class GreedyDecoder:
    """Greedy decoding of left-padded prompt embeddings with per-row token limits and EOS.

    Outputs equal `model.generate(inputs_embeds=..., do_sample=False)` row by row (exactly in float32;
    within bf16 rounding of near-tied logits in bf16), with `pad_token_id` after a row's EOS or limit.
    Not thread-safe: one call at a time per decoder.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_batch: int = 256,
        use_cuda_graph: bool | None = None,
        check_every: int = 32,
        max_shapes: int = 12,
        attention: str = "auto",
        compact: bool = True,
    ) -> None:
        self.model = model
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.max_batch = max_batch
        self.use_cuda_graph = self.device.type == "cuda" if use_cuda_graph is None else use_cuda_graph
        self.check_every = max(1, check_every)
        self.max_shapes = max(1, max_shapes)
        self._slots: OrderedDict[tuple[int, int], _Slot] = OrderedDict()
        self._arena: _Arena | None = None
        #: Move the rows still running to a smaller batch once those that ended leave half of it or more.
        self.compact = compact
        #: How many times rows were moved to a smaller batch (for benchmarks and tests).
        self.compactions = 0
        if attention != "auto" and attention not in VARIANTS:
            raise ValueError(f"attention must be 'auto' or one of {sorted(VARIANTS)}, got {attention!r}")
        #: Decode attention: "auto" times each variant's graph at capture and keeps the faster one.
        self.attention = attention
        #: Why graph capture was given up, if it was.
        self.capture_error: str | None = None
        #: Milliseconds per decode step of each variant, per (batch, cache length) shape timed.
        self.variant_timings: dict[str, dict[str, float]] = {}
        self._logits_kw = self._logits_keyword(model)

    @staticmethod
    def _logits_keyword(model: torch.nn.Module) -> str | None:
        parameters = inspect.signature(model.forward).parameters
        for name in ("logits_to_keep", "num_logits_to_keep"):
            if name in parameters:
                return name
        return None

    # -- public -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int | Sequence[int],
        *,
        eos_token_id: int | Sequence[int] | None,
        pad_token_id: int,
    ) -> torch.Tensor:
        """New token ids [batch, max(max_new_tokens)] on the CPU, `pad_token_id` after each row's end."""
        batch, prompt_len, _ = inputs_embeds.shape
        limits = [max_new_tokens] * batch if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(limits) != batch or min(limits, default=1) < 1:
            raise ValueError(f"need one max_new_tokens >= 1 per row, got {limits} for {batch} rows")
        if batch > self.max_batch:
            raise ValueError(f"batch {batch} is over this decoder's max_batch {self.max_batch}")
        new_tokens = max(limits)
        eos = (
            [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id
        )
        if len(eos) > MAX_EOS_IDS:
            raise ValueError(f"at most {MAX_EOS_IDS} end-of-sequence ids are supported, got {len(eos)}")
        slot = self._slot(self._rows(batch), prompt_len + new_tokens)
        default = "sdpa" if self.attention == "auto" else self.attention
        with decode_attention_enabled(self.model, slot.variant or default):
            self._prefill(slot, inputs_embeds, attention_mask, limits, list(eos), pad_token_id)
        if new_tokens > 1:
            self._ensure_graph(slot, None)
        out = torch.full((batch, new_tokens), pad_token_id, dtype=torch.long, device=self.device)
        #: The caller's row of each running slot row.
        order = list(range(batch))
        # A smaller batch keeps the attention its rows were decoded with (see _compacted).
        with decode_attention_enabled(self.model, slot.variant or default):
            for done in range(1, new_tokens):
                if slot.graph is not None:
                    slot.graph.replay()
                else:
                    self._step(slot)
                if done % self.check_every:
                    continue
                running = (~slot.finished[: len(order)]).nonzero().flatten().tolist()
                if not running:
                    break
                left = max(limits[order[k]] for k in running) - done
                if self.compact and 2 * len(running) <= slot.batch and left > self.check_every:
                    slot = self._compacted(slot, running, order, out, new_tokens)
                    order = [order[k] for k in running]
        out[order] = slot.tokens[: len(order), :new_tokens]
        return out.to("cpu")

    def release(self) -> None:
        """Free the KV arena and every captured graph (the next call allocates again)."""
        self._slots.clear()
        self._arena = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _ensure_graph(self, slot: _Slot, variant: str | None) -> None:
        """Capture the slot's decode step once (the fastest attention, or `variant` when given)."""
        if slot.graph is not None or not self.use_cuda_graph:
            return
        try:
            slot.graph, slot.variant = self._capture_fastest(slot, variant)
        except RuntimeError as exc:  # an op that cannot be captured: stay correct, run eagerly
            self.use_cuda_graph = False
            self.capture_error = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed, decoding eagerly: %s", self.capture_error)

    def _compacted(
        self, slot: _Slot, running: list[int], order: list[int], out: torch.Tensor, new_tokens: int
    ) -> _Slot:
        """The rows still running, moved to the front of a smaller batch; the others' tokens go to `out`."""
        ended = sorted(set(range(len(order))) - set(running))
        out[[order[k] for k in ended]] = slot.tokens[ended, :new_tokens]
        smaller = self._slot(self._rows(len(running)), slot.length)
        # Padding rows repeat the first running row, as at prefill.
        rows = torch.tensor(running + running[:1] * (smaller.batch - len(running)), device=self.device)
        assert self._arena is not None
        self._arena.gather(rows, slot.batch, slot.length)
        for name in ("mask", "ids", "positions", "limits", "finished", "tokens"):
            getattr(smaller, name).copy_(getattr(slot, name)[rows])
        for name in ("cache_position", "step", "eos", "pad"):
            getattr(smaller, name).copy_(getattr(slot, name))
        self._ensure_graph(smaller, slot.variant)
        self.compactions += 1
        return smaller

    # -- shapes -------------------------------------------------------------------------------------------
    def _rows(self, batch: int) -> int:
        """Slot rows for a batch: the next power of two up to 16, then the next multiple of 16, so that few
        shapes (and graphs) occur and few padding rows decode."""
        rows = 1 << (batch - 1).bit_length() if batch <= ROW_STEP else -(-batch // ROW_STEP) * ROW_STEP
        return min(self.max_batch, rows)

    def _slot(self, rows: int, needed: int) -> _Slot:
        length = -(-needed // LENGTH_BUCKET) * LENGTH_BUCKET
        key = (rows, length)
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
            return slot
        if self._arena is None or not self._arena.fits(rows, length):
            self.release()  # graphs of the old arena's views go with it, before the new one is allocated
            self._arena = _Arena(self.model.config, rows, length, self.device, self.dtype)
            log.info("decode cache: %d positions (batch %d x length %d)", rows * length, rows, length)
        while len(self._slots) >= self.max_shapes:
            self._slots.popitem(last=False)
        cache = self._arena.cache(rows, length)

        def longs(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.long, device=self.device)

        slot = _Slot(
            batch=rows,
            length=length,
            cache=cache,
            mask=longs(rows, length),
            ids=longs(rows, 1),
            positions=longs(rows, 1),
            cache_position=longs(1),
            step=longs(1),
            limits=longs(rows),
            finished=torch.zeros(rows, dtype=torch.bool, device=self.device),
            tokens=longs(rows, length),
            eos=longs(MAX_EOS_IDS),
            pad=longs(),
        )
        self._slots[key] = slot
        log.info("decode shape: batch %d, cache length %d", rows, length)
        return slot

    # -- the loop -----------------------------------------------------------------------------------------
    def _prefill(
        self,
        slot: _Slot,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        limits: list[int],
        eos: list[int],
        pad: int,
    ) -> None:
        batch, prompt_len, _ = embeds.shape
        rows = slot.batch
        # Only the real rows are prefilled; the slot's padding rows then repeat row 0 (its cache too), so that
        # they decode real data and are dropped at the end.
        fill = [0] * (rows - batch)
        mask = mask.to(self.device, torch.long)
        slot.mask.fill_(1)
        slot.mask[:batch, :prompt_len].copy_(mask)
        slot.limits.copy_(torch.tensor(limits + [limits[0]] * len(fill)))
        slot.eos.copy_(torch.tensor(eos + [-1] * (MAX_EOS_IDS - len(eos))))
        slot.pad.fill_(pad)
        positions = mask.cumsum(-1) - 1
        positions.masked_fill_(mask == 0, 1)
        extra = {self._logits_kw: 1} if self._logits_kw else {}
        assert self._arena is not None
        out = self.model(
            inputs_embeds=embeds.to(self.device, self.dtype),
            attention_mask=slot.mask[:batch],
            position_ids=positions,
            cache_position=torch.arange(prompt_len, device=self.device),
            past_key_values=self._arena.cache(batch, slot.length) if fill else slot.cache,
            use_cache=True,
            **extra,
        )
        logits = out.logits[:, -1, :]
        if fill:
            self._arena.repeat_first(batch, rows, slot.length)
            slot.mask[batch:].copy_(slot.mask[:1].expand(len(fill), -1))
            positions = torch.cat([positions, positions[fill]])
            logits = torch.cat([logits, logits[fill]])
        slot.positions.copy_(positions[:, -1:])
        slot.cache_position.fill_(prompt_len - 1)
        slot.step.zero_()
        slot.finished.zero_()
        slot.tokens.fill_(pad)
        self._advance(slot, logits)

    def _step(self, slot: _Slot) -> None:
        out = self.model(
            input_ids=slot.ids,
            attention_mask=slot.mask,
            position_ids=slot.positions,
            cache_position=slot.cache_position,
            past_key_values=slot.cache,
            use_cache=True,
        )
        self._advance(slot, out.logits[:, -1, :])

    def _advance(self, slot: _Slot, logits: torch.Tensor) -> None:
        """Pick each row's token, record it, mark rows that hit EOS or their limit, move to the next slot."""
        chosen = torch.where(slot.finished, slot.pad, logits.argmax(-1))
        slot.tokens.index_copy_(1, slot.step, chosen[:, None])
        hit_eos = (chosen[:, None] == slot.eos[None, :]).any(-1)
        slot.finished.logical_or_(hit_eos | (slot.step + 1 >= slot.limits))
        slot.ids.copy_(chosen[:, None])
        slot.positions.add_(1)
        slot.cache_position.add_(1)
        slot.step.add_(1)

    def _capture_fastest(self, slot: _Slot, variant: str | None = None) -> tuple[Any, str]:
        """Capture the step with each candidate attention (only `variant` when given: a smaller batch keeps
        the attention its rows were decoded with); keep the graph whose replays are fastest."""
        if variant is not None:
            candidates = [variant]
        else:
            candidates = list(VARIANTS) if self.attention == "auto" else [self.attention]
        best: tuple[float, Any, str] | None = None
        timings: dict[str, float] = {}
        for variant in candidates:
            with decode_attention_enabled(self.model, variant):
                graph = self._capture(slot)
            ms = self._time_replays(slot, graph) if len(candidates) > 1 else 0.0
            timings[variant] = round(ms, 3)
            if best is None or ms < best[0]:
                best = (ms, graph, variant)
        assert best is not None
        self.variant_timings[f"{slot.batch}x{slot.length}"] = timings
        log.info(
            "decode graph for batch %d, cache %d: %s (ms per step %s)",
            slot.batch,
            slot.length,
            best[2],
            timings,
        )
        return best[1], best[2]

    def _time_replays(self, slot: _Slot, graph: Any) -> float:
        """Milliseconds per replay; the state the replays advance is put back."""
        saved = [t.clone() for t in slot.state()]
        graph.replay()  # first replay uploads the graph
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(TIMED_REPLAYS):
            graph.replay()
        end.record()
        end.synchronize()
        for tensor, value in zip(slot.state(), saved, strict=True):
            tensor.copy_(value)
        return float(start.elapsed_time(end)) / TIMED_REPLAYS

    def _capture(self, slot: _Slot) -> Any:
        """Capture one decode step. Warm-up steps run on a side stream first (kernel selection, workspaces);
        the state they advance is put back, and the cache slots they wrote are rewritten by the real steps."""
        saved = [t.clone() for t in slot.state()]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._step(slot)
            torch.cuda.current_stream().wait_stream(side)
            for tensor, value in zip(slot.state(), saved, strict=True):
                tensor.copy_(value)
            # Each graph gets its own memory pool: graphs of evicted shapes are freed with their pools.
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step(slot)
            return graph
        finally:
            for tensor, value in zip(slot.state(), saved, strict=True):
                tensor.copy_(value)
