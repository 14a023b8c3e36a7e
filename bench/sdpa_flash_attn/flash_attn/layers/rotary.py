"""flash_attn.layers.rotary.apply_rotary_emb of the SDPA stand-in, in plain PyTorch."""

from __future__ import annotations

import torch


def apply_rotary_emb(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool = False,
    inplace: bool = False,
    seqlen_offsets: int | torch.Tensor = 0,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
) -> torch.Tensor:
    """Rotate the first `2 * cos.shape[-1]` features of x [batch, seqlen, heads, head_dim] by the angles whose
    cosines and sines are cos, sin [seqlen, rotary_dim / 2]: the halves (GPT-NeoX) or, with `interleaved`,
    the even and odd features (GPT-J) as pairs. Features past the rotary dimension pass through.
    """
    if cu_seqlens is not None or max_seqlen is not None or not isinstance(seqlen_offsets, int):
        raise NotImplementedError("the SDPA stand-in's apply_rotary_emb takes no packed sequences")
    seqlen = x.shape[1]
    rotary_dim = 2 * cos.shape[-1]
    cos = cos[seqlen_offsets : seqlen_offsets + seqlen, None, :].to(x.dtype)
    sin = sin[seqlen_offsets : seqlen_offsets + seqlen, None, :].to(x.dtype)
    rotated, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if interleaved:
        even, odd = rotated[..., 0::2], rotated[..., 1::2]
        turned = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    else:
        first, second = rotated.chunk(2, dim=-1)
        turned = torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)
    result = torch.cat((turned, rest), dim=-1) if rest.shape[-1] else turned
    if inplace:
        x.copy_(result)
        return x
    return result
