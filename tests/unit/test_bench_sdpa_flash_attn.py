"""bench/sdpa_flash_attn: the flash-attn calls of Ovis-U1's remote code on PyTorch's SDPA give what flash-attn
defines: attention within each packed sequence, and rotary embeddings on the first features.

The package is loaded from its files under other names, so that no test after these finds a `flash_attn`.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[2] / "bench" / "sdpa_flash_attn" / "flash_attn"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


varlen = _load("bench_sdpa_flash_attn", PACKAGE / "__init__.py")
rotary = _load("bench_sdpa_flash_attn_rotary", PACKAGE / "layers" / "rotary.py")


def _reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int], causal: bool
) -> torch.Tensor:
    """Softmax attention written out, one sequence at a time."""
    out = torch.zeros_like(q)
    for start, end in itertools.pairwise(bounds):
        if end == start:
            continue
        qs, ks, vs = (x[start:end].transpose(0, 1).double() for x in (q, k, v))  # heads, length, dim
        scores = qs @ ks.transpose(1, 2) / math.sqrt(q.shape[-1])
        if causal:
            length = end - start
            scores = scores.masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf"))
        out[start:end] = (scores.softmax(-1) @ vs).transpose(0, 1).to(q.dtype)
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_each_packed_sequence_attends_to_itself_alone(causal: bool) -> None:
    torch.manual_seed(0)
    lengths = [64, 7, 64, 0, 13, 64, 7, 1]  # repeated lengths share a group; an empty one is skipped
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    q, k, v = (torch.randn(bounds[-1], 3, 8) for _ in range(3))
    cu_seqlens = torch.tensor(bounds, dtype=torch.int32)

    out = varlen.flash_attn_varlen_func(
        q, k, v, cu_seqlens, cu_seqlens, max(lengths), max(lengths), causal=causal
    )

    torch.testing.assert_close(out, _reference(q, k, v, bounds, causal), atol=1e-5, rtol=1e-5)


def test_the_grouping_is_worked_out_once_per_cu_seqlens_tensor() -> None:
    cu_seqlens = torch.tensor([0, 4, 8, 11], dtype=torch.int32)
    q = torch.randn(11, 2, 4)

    varlen.flash_attn_varlen_func(q, q, q, cu_seqlens, cu_seqlens, 4, 4)
    first = varlen._plan(cu_seqlens)
    varlen.flash_attn_varlen_func(q, q, q, cu_seqlens, cu_seqlens, 4, 4)

    assert varlen._plan(cu_seqlens) is first
    assert [group.length for group in first] == [3, 4]
    assert varlen._plan(cu_seqlens.clone()) is not first  # an equal tensor is another call's


@pytest.mark.parametrize(
    "option", [{"dropout_p": 0.1}, {"window_size": (8, 8)}, {"softcap": 1.0}, {"return_attn_probs": True}]
)
def test_what_the_remote_code_never_asks_for_is_refused(option: dict[str, object]) -> None:
    cu_seqlens = torch.tensor([0, 4], dtype=torch.int32)
    q = torch.randn(4, 2, 4)

    with pytest.raises(NotImplementedError, match=next(iter(option))):
        varlen.flash_attn_varlen_func(q, q, q, cu_seqlens, cu_seqlens, 4, 4, **option)


def test_rotary_turns_each_pair_of_halves_by_its_angle() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 5, 3, 10)  # batch, length, heads, head_dim; 8 rotated features, 2 passed through
    angles = torch.randn(5, 4)

    out = rotary.apply_rotary_emb(x, angles.cos(), angles.sin())

    first, second = x[..., :4], x[..., 4:8]
    cos, sin = angles.cos()[None, :, None], angles.sin()[None, :, None]
    torch.testing.assert_close(out[..., :4], first * cos - second * sin)
    torch.testing.assert_close(out[..., 4:8], first * sin + second * cos)
    torch.testing.assert_close(out[..., 8:], x[..., 8:])


def test_interleaved_rotary_turns_even_and_odd_features_together() -> None:
    torch.manual_seed(2)
    x = torch.randn(1, 3, 2, 4)
    angles = torch.randn(3, 2)

    out = rotary.apply_rotary_emb(x, angles.cos(), angles.sin(), interleaved=True)

    as_complex = torch.view_as_complex(x.reshape(1, 3, 2, 2, 2).contiguous())
    turned = as_complex * torch.polar(torch.ones_like(angles), angles)[None, :, None]
    torch.testing.assert_close(out, torch.view_as_real(turned).reshape(1, 3, 2, 4))
