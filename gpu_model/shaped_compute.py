"""Ovis-U1-3B's size and work, counted by hand from its published architecture (no torch here).

The benchmark backend (`gpu_model.shaped`) must cost what the real model costs per item. These formulas
describe the real model: Qwen3-1.7B (tied embeddings), AIMv2-large at 448 px (SwiGLU MLP of 2816) with
Ovis's head, and the Yak DiT as its public modeling code builds it (double blocks with a third modulation
triple and an image-only self-attention, single blocks with fused linear1/linear2, a 2-block token refiner
with a class token). `bench/gpu_throughput.py` compares them with the parameters and FLOPs that PyTorch's
FLOP counter measures on the stand-in (built on the meta device) and with the reference's parameter counts.

FLOPs count multiply-adds twice; attention counts QK^T and PV over every key the kernel reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Parameter counts of the full-size build (reference/ovis-u1.md).
REFERENCE_PARAMS = {"llm": 1.72e9, "vision": 0.38e9, "generator": 1.21e9, "total": 3.34e9}
#: Flux VAE (diffusers AutoencoderKL, channels 128-256-512-512, 2 layers per block, no quant convs): the
#: generator's VAE is that library module with that config in both the real model and the stand-in.
FLUX_VAE_PARAMS = 83_819_683


@dataclass(frozen=True)
class RealShape:
    """Ovis-U1-3B's dimensions."""

    vocab: int = 151936
    hidden: int = 2048
    layers: int = 28
    heads: int = 16
    kv_heads: int = 8
    head_dim: int = 128
    intermediate: int = 6144
    vision_hidden: int = 1024
    vision_layers: int = 24
    vision_swiglu: int = 2816
    patch: int = 14
    image_size: int = 448
    visual_vocab: int = 16384
    indicators: int = 5
    dit_hidden: int = 1536
    double_blocks: int = 6
    single_blocks: int = 12
    mlp_ratio: int = 4
    refiner_depth: int = 2
    latent_patch_channels: int = 64

    @property
    def patches(self) -> int:
        """Patches per image at 448 px: (448 / 14) ** 2."""
        return (self.image_size // self.patch) ** 2

    @property
    def visual_tokens(self) -> int:
        """Visual tokens per image after the 2x2 merge."""
        return self.patches // 4


REAL = RealShape()


def llm_params(s: RealShape = REAL) -> int:
    """Qwen3-1.7B: embeddings tied with the LM head; q/k norms per head."""
    attention = s.hidden * s.heads * s.head_dim * 2 + 2 * s.hidden * s.kv_heads * s.head_dim
    layer = attention + 3 * s.hidden * s.intermediate + 2 * s.hidden + 2 * s.head_dim
    return s.vocab * s.hidden + s.layers * layer + s.hidden


def vision_params(s: RealShape = REAL) -> int:
    """AIMv2-large (RMSNorm, SwiGLU, no biases but the patch embedding's) and Ovis's head."""
    h = s.vision_hidden
    stem = 3 * s.patch**2 * h + h + s.patches * h + h
    layer = 4 * h * h + 3 * h * s.vision_swiglu + 2 * h
    head_out = s.visual_vocab - s.indicators
    return stem + s.vision_layers * layer + h + 4 * h * head_out + 2 * head_out


def dit_params(s: RealShape = REAL) -> int:
    """Yak DiT with its refiner (qkv and linear biases on, as in its code)."""
    h = s.dit_hidden
    m = s.mlp_ratio * h
    linear = lambda a, b: a * b + b  # noqa: E731
    attention = linear(h, 3 * h) + linear(h, h) + 2 * (h // 12)  # qkv, proj, q/k RMSNorm scales
    mlp = linear(h, m) + linear(m, h)
    double = linear(h, 9 * h) + linear(h, 6 * h) + 3 * attention + 2 * mlp
    single = linear(h, 3 * h + m) + linear(h + m, h) + linear(h, 3 * h) + 2 * (h // 12)
    context = 2 * REAL.hidden
    refiner_block = 4 * h + linear(h, 3 * h) + linear(h, h) + mlp + linear(h, 2 * h)
    refiner = linear(context, h) + linear(context, h) + linear(h, h) + h + s.refiner_depth * refiner_block
    embedders = linear(s.latent_patch_channels, h) + 2 * (linear(256, h) + linear(h, h)) - linear(256, h)
    embedders += linear(h, h) + linear(h, h)  # vector_in: pooled (hidden) -> hidden -> hidden
    final = linear(h, 2 * h) + linear(h, s.latent_patch_channels)
    return s.double_blocks * double + s.single_blocks * single + refiner + embedders + final


def real_params() -> dict[str, float]:
    """Parameters by part, grouped as the reference does (the visual embedding table: total only)."""
    vte = REAL.visual_vocab * REAL.hidden
    parts = {
        "llm": float(llm_params()),
        "vision": float(vision_params()),
        "generator": float(dit_params() + FLUX_VAE_PARAMS),
    }
    parts["total"] = sum(parts.values()) + vte
    return parts


# -- FLOPs ------------------------------------------------------------------------------------------------
def vision_flops(s: RealShape = REAL) -> float:
    """One 448 px image through the tower (bidirectional attention over its patches) and the head."""
    n, h = s.patches, s.vision_hidden
    per_layer = 2 * n * (4 * h * h + 3 * h * s.vision_swiglu) + 4 * n * n * h
    head = 2 * s.visual_tokens * 4 * h * (s.visual_vocab - s.indicators)
    table = 2 * s.visual_tokens * s.visual_vocab * s.hidden
    return s.vision_layers * per_layer + head + table + 2 * n * 3 * s.patch**2 * h


def llm_flops(tokens: int, keys: int, s: RealShape = REAL, *, logits: int = 1) -> float:
    """`tokens` new positions attending to `keys` cached ones each, logits for the last `logits` positions."""
    width = s.heads * s.head_dim
    linear = (
        2 * s.hidden * width * 2
        + 2 * 2 * s.hidden * s.kv_heads * s.head_dim
        + 2 * 3 * s.hidden * s.intermediate
    )
    attention = 4 * keys * width
    return s.layers * tokens * (linear + attention) + 2 * logits * s.hidden * s.vocab


def dit_pass_flops(
    image_tokens: int, text_tokens: int, s: RealShape = REAL, *, self_attn_tokens: int = 0
) -> float:
    """One DiT pass; `self_attn_tokens`: tokens of the image-only self-attention (default: all)."""
    h = s.dit_hidden
    m = s.mlp_ratio * h
    n, t = image_tokens, text_tokens
    a = self_attn_tokens or n
    double = (
        2 * (n * (8 * h * h + 2 * h * m) + t * (4 * h * h + 2 * h * m)) + 4 * (n + t) ** 2 * h + 4 * a * a * h
    )
    single = 2 * (n + t) * (3 * h * h + h * m + (h + m) * h) + 4 * (n + t) ** 2 * h
    edges = 2 * n * s.latent_patch_channels * h * 2
    return s.double_blocks * double + s.single_blocks * single + edges


def refiner_flops(text_tokens: int, s: RealShape = REAL) -> float:
    """The token refiner over one condition (it does not depend on the timestep: once per condition)."""
    h, t = s.dit_hidden, text_tokens + 1
    block = 2 * t * (4 * h * h + 2 * s.mlp_ratio * h * h) + 4 * t * t * h
    return 2 * text_tokens * 2 * REAL.hidden * h + s.refiner_depth * block


@dataclass(frozen=True)
class ItemWork:
    """FLOPs of one item of a task, split by part."""

    parts: dict[str, float]

    @property
    def total(self) -> float:
        """All parts together."""
        return sum(self.parts.values())


def caption_work(prompt_tokens: int, new_tokens: int, cache_len: int | None = None) -> ItemWork:
    """One caption: vision, prefill of the prompt, then one decode step per new token.

    `cache_len`: keys read per decode step (a static cache reads all of them); default the live context.
    """
    decode = sum(llm_flops(1, cache_len or prompt_tokens + k + 1, logits=1) for k in range(new_tokens - 1))
    return ItemWork(
        {
            "vision": vision_flops(),
            "prefill": llm_flops(prompt_tokens, cache_len or prompt_tokens, logits=1),
            "decode": decode,
        }
    )


def image_work(
    *, steps: int, image_tokens: int, text_tokens: list[int], source_passes: int, conditions: int
) -> ItemWork:
    """One generated image: `conditions` LLM conditioning passes (vision + prefill), `steps` steps of one DiT
    pass per text length (the first `source_passes` also carry `image_tokens` source latents)."""
    passes = 0.0
    for k, text in enumerate(text_tokens):
        tokens = image_tokens * (2 if k < source_passes else 1)
        passes += dit_pass_flops(tokens, text)
    mean_text = sum(text_tokens) // len(text_tokens)
    condition = vision_flops() + llm_flops(mean_text, mean_text, logits=0)
    return ItemWork(
        {
            "conditions": conditions * condition,
            "refiner": sum(refiner_flops(t) for t in text_tokens),
            "dit": steps * passes,
        }
    )


# -- the stand-in, measured -------------------------------------------------------------------------------
def measure_stand_in(text_tokens: int = 300, decode_context: int = 364) -> dict[str, dict[str, float]]:
    """Parameters and FLOPs of the `ovis-u1-shaped` modules at full size, counted by PyTorch's FLOP counter
    on the meta device (no memory, no arithmetic), next to this module's formulas for the real model."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gpu_model.shaped_models import FULL, ShapedDiT, VisualTokenizer, build_llm, build_vae

    def count(fn: Any) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return float(counter.get_total_flops())

    def size(*modules: torch.nn.Module) -> float:
        return float(sum(p.numel() for m in modules for p in m.parameters()))

    with torch.device("meta"), torch.inference_mode():
        llm = build_llm(FULL, eos_token_id=2, pad_token_id=0)
        vision = VisualTokenizer(FULL)
        table = torch.nn.Embedding(FULL.visual_vocab, FULL.llm_hidden)
        dit = ShapedDiT(FULL)
        vae = build_vae(FULL)
        h = FULL.llm_hidden

        def meta_rope(x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # transformers' rotary embedding enters an autocast region, which the meta device refuses; its
            # FLOPs are negligible, so it is replaced by tables of the right shape.
            table = torch.zeros(*position_ids.shape, FULL.llm_head_dim)
            return table, table

        llm.model.rotary_emb.forward = meta_rope
        prompt = torch.zeros(1, text_tokens, h)
        context = llm.model(
            inputs_embeds=torch.zeros(1, decode_context - 1, h), use_cache=True
        ).past_key_values
        condition = torch.zeros(1, text_tokens, FULL.condition_dim)
        text, pooled = dit.refiner(condition)
        t = torch.ones(1)

        def dit_pass(image_tokens: int) -> None:
            ids = torch.zeros(image_tokens, 3)
            dit(torch.zeros(1, image_tokens, 64), text, pooled, t, dit.rope(text_tokens, ids))

        measured = {
            "vision_per_image": count(lambda: vision(torch.zeros(1, 3, 448, 448)) @ table.weight),
            "llm_prefill": count(lambda: llm(inputs_embeds=prompt, use_cache=False, logits_to_keep=1)),
            "llm_decode_step": count(
                lambda: llm(inputs_embeds=torch.zeros(1, 1, h), past_key_values=context, use_cache=True)
            ),
            "refiner": count(lambda: dit.refiner(condition)),
            "dit_pass_t2i": count(lambda: dit_pass(4096)),
            "dit_pass_edit_with_source": count(lambda: dit_pass(2 * 3844)),
            "vae_decode_1024": count(lambda: vae.decode(torch.zeros(1, 16, 128, 128))),
            "vae_encode_992": count(lambda: vae.encode(torch.zeros(1, 3, 992, 992))),
        }
        params = {
            "llm": size(llm),
            "vision": size(vision),
            "generator": size(dit, vae),
            "total": size(llm, vision, table, dit, vae),
        }
    formulas = {
        "vision_per_image": vision_flops(),
        "llm_prefill": llm_flops(text_tokens, text_tokens),
        "llm_decode_step": llm_flops(1, decode_context),
        "refiner": refiner_flops(text_tokens),
        "dit_pass_t2i": dit_pass_flops(4096, text_tokens),
        "dit_pass_edit_with_source": dit_pass_flops(2 * 3844, text_tokens),
        "vae_decode_1024": measured["vae_decode_1024"],  # the same library module and config in both
        "vae_encode_992": measured["vae_encode_992"],
    }
    return {
        "params_stand_in": params,
        "params_real": real_params(),
        "params_reference": dict(REFERENCE_PARAMS),
        "flops_stand_in": measured,
        "flops_real": formulas,
    }
