"""A stand-in for the flash-attn calls of Ovis-U1's remote code, on PyTorch's scaled_dot_product_attention.

For benchmarks and tests on hosts without flash-attn (the lent GPU machine, CPU machines): put
`bench/sdpa_flash_attn` on PYTHONPATH and the remote code's `import flash_attn` finds this package. It carries
no package metadata, so transformers does not take it for flash-attn 2 (`is_flash_attn_2_available()` stays
False) and the LLM keeps its own attention.

`flash_attn_varlen_func` runs the packed sequences grouped by length: every group of equal-length sequences
is one SDPA call without a mask (PyTorch's flash or memory-efficient kernel), so nothing is padded. The
grouping is worked out once per `cu_seqlens` tensor: the vision tower passes the same one to all its blocks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__version__ = "0.0.0+sdpa"

#: Groupings kept for the most recent `cu_seqlens` tensors (a vision forward uses two: windows, full).
_PLANS_KEPT = 4


@dataclass(frozen=True)
class _Group:
    """Sequences of one length: `index[i, j]` is the packed row of token j of the group's sequence i."""

    length: int
    index: torch.Tensor


_plans: list[tuple[torch.Tensor, list[_Group]]] = []


def _plan(cu_seqlens: torch.Tensor) -> list[_Group]:
    """Equal-length groups of the sequences that `cu_seqlens` delimits (cached by tensor identity)."""
    for tensor, groups in _plans:
        if tensor is cu_seqlens:
            return groups
    bounds = cu_seqlens.tolist()
    starts: dict[int, list[int]] = {}
    for start, end in itertools.pairwise(bounds):
        if end > start:
            starts.setdefault(end - start, []).append(start)
    device = cu_seqlens.device
    groups = [
        _Group(
            length,
            torch.tensor(first, device=device, dtype=torch.long)[:, None]
            + torch.arange(length, device=device, dtype=torch.long)[None, :],
        )
        for length, first in sorted(starts.items())
    ]
    # The tensor is kept alive with its plan, so a later tensor cannot reuse its identity.
    _plans.insert(0, (cu_seqlens, groups))
    del _plans[_PLANS_KEPT:]
    return groups


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention within each packed sequence: q, k, v are [total_tokens, heads, head_dim]; so is the result.

    Only what Ovis-U1's vision tower uses: queries and keys split alike, no dropout, window, softcap, ALiBi,
    paged cache or returned probabilities (each of those raises NotImplementedError).
    """
    unsupported = {
        "cu_seqlens_k different from cu_seqlens_q": cu_seqlens_k is not cu_seqlens_q
        and not torch.equal(cu_seqlens_k, cu_seqlens_q),
        "dropout_p": dropout_p != 0.0,
        "window_size": tuple(window_size) != (-1, -1),
        "softcap": softcap != 0.0,
        "alibi_slopes": alibi_slopes is not None,
        "return_attn_probs": return_attn_probs,
        "block_table": block_table is not None,
    }
    asked = [name for name, present in unsupported.items() if present]
    if asked:
        raise NotImplementedError(f"the SDPA stand-in for flash_attn_varlen_func does not support {asked}")
    out = torch.empty(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype, device=q.device)
    for group in _plan(cu_seqlens_q):
        count, length = group.index.shape
        rows = group.index.reshape(-1)
        attended = F.scaled_dot_product_attention(
            _heads_first(q, rows, count),
            _heads_first(k, rows, count),
            _heads_first(v, rows, count),
            is_causal=causal,
            scale=softmax_scale,
        )
        out.index_copy_(0, rows, attended.transpose(1, 2).reshape(count * length, q.shape[1], v.shape[2]))
    return out


def _heads_first(x: torch.Tensor, rows: torch.Tensor, count: int) -> torch.Tensor:
    """The packed rows `rows` of x [tokens, heads, dim] as [count, heads, length, dim]."""
    return x.index_select(0, rows).view(count, -1, x.shape[1], x.shape[2]).transpose(1, 2)
