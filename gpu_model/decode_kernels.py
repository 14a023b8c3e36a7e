"""The kernels of the fast greedy decoder: Llama-style RMSNorms compiled into one kernel each, and the decode
attention that reads each KV head once, registered with transformers as an attention implementation.

A decode step of a 28-layer model launches ~1,600 kernels; replayed from a CUDA graph, their count, not their
work, sets the step's floor at small batches (`fuse_norms`). One new token per row attends to the whole cache:
transformers' SDPA path copies K and V once per query head first, these read each KV head once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

#: Prefix of the names under which the decode attentions are registered with transformers.
ATTENTION_NAME = "ovis_fast_decode"
#: RMSNorm classes computing weight * normalised(x) in float32, as Llama's: fused by `fuse_norms`.
LLAMA_STYLE_NORMS = frozenset({"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm"})


def _rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = hidden.dtype
    x = hidden.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def tolerate_compile_failures(recompile_limit: int = 64) -> None:
    """Let compiled regions fall back to eager on a compile error (logged) instead of failing the work, and
    leave room for one graph per input rank and 0/1-specialised size (the default limit is 8)."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    for limit in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, max(recompile_limit, getattr(torch._dynamo.config, limit)))


def fuse_norms(model: torch.nn.Module) -> int:
    """Run the model's Llama-style RMSNorms as one compiled kernel each instead of ~7 small ones.

    A decode step of a 28-layer model launches ~1,600 kernels, 4 RMSNorms a layer among them; replayed from
    a CUDA graph, their count, not their work, sets the step's floor at small batches. Returns how many
    norms were rerouted (their weights stay the module's own)."""
    tolerate_compile_failures()
    compiled = torch.compile(_rms_norm, dynamic=True)
    count = 0
    for module in model.modules():
        if type(module).__name__ in LLAMA_STYLE_NORMS and hasattr(module, "variance_epsilon"):
            norm: Any = module
            weight, eps = norm.weight, float(norm.variance_epsilon)

            def forward(
                hidden: torch.Tensor, _weight: torch.Tensor = weight, _eps: float = eps
            ) -> torch.Tensor:
                return compiled(hidden, _weight, _eps)

            module.forward = forward
            count += 1
    return count


Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]


def _grouped_sdpa(
    grouped: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """One fused SDPA kernel over [batch, kv heads, query heads per kv head, dim] queries (fp32 softmax)."""
    return F.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scale)


def _grouped_matmul(
    grouped: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """The same as two batched matrix products (cuBLAS) around a float32 softmax."""
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scale
    if mask is not None:
        scores = scores + mask
    return torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)


VARIANTS: dict[str, Kernel] = {"sdpa": _grouped_sdpa, "matmul": _grouped_matmul}


def _decode_attention(variant: str) -> Any:
    kernel = VARIANTS[variant]

    def attend(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        """One new token per row reads each KV head once (transformers' SDPA path copies K and V per query
        head first); prompts (several tokens per row) keep transformers' SDPA path."""
        if query.shape[2] != 1:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(
                module,
                query,
                key,
                value,
                attention_mask,
                dropout=dropout,
                scaling=scaling,
                is_causal=is_causal,
            )
        # The query heads sharing a KV head become that head's query rows.
        batch, q_heads, _, dim = query.shape
        grouped = query.reshape(batch, key.shape[1], q_heads // key.shape[1], dim)
        mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]
        out = kernel(grouped, key, value, mask, scaling if scaling is not None else dim**-0.5)
        return out.reshape(batch, q_heads, 1, dim).transpose(1, 2).contiguous(), None

    return attend


def _register_attention() -> bool:
    try:
        from transformers.modeling_utils import AttentionInterface
    except ImportError:  # older transformers: keep the model's own attention
        return False
    for variant in VARIANTS:
        AttentionInterface.register(f"{ATTENTION_NAME}_{variant}", _decode_attention(variant))
    return True


@contextlib.contextmanager
def decode_attention_enabled(model: torch.nn.Module, variant: str) -> Iterator[None]:
    config: Any = model.config
    previous = config._attn_implementation
    if (previous == "sdpa" or previous.startswith(ATTENTION_NAME)) and _register_attention():
        config._attn_implementation = f"{ATTENTION_NAME}_{variant}"
    try:
        yield
    finally:
        config._attn_implementation = previous
