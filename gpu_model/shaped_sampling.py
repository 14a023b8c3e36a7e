"""Yak's flow-matching sampler, reduced to tensors: latent packing, position ids, the shifted schedule and the
Euler loop with classifier-free guidance over any number of passes per step."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gpu_model.shaped_models import Rope

#: Pixels per packed latent token side: the VAE's 8x times Yak's 2x2 patches.
PIXELS_PER_TOKEN = 16


@dataclass(frozen=True)
class Pass:
    """One DiT pass of a step: a refined condition, its rotary tables and, for editing, the source latents
    appended to the image sequence."""

    text: torch.Tensor
    pooled: torch.Tensor
    rope: Rope
    source: torch.Tensor | None = None


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, C * 4]: 2x2 latent patches as tokens."""
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` for an image of `height` x `width` pixels."""
    b, _, packed = tokens.shape
    rows, cols, c = height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN, packed // 4
    grid = tokens.reshape(b, rows, cols, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, c, rows * 2, cols * 2)


def image_ids(height: int, width: int, *, frame: int, device: torch.device) -> torch.Tensor:
    """Position ids (frame, row, column) of an image's tokens; the edit's source image is frame 1."""
    rows, cols = height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 0] = frame
    ids[..., 1] = torch.arange(rows, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, device=device)[None, :]
    return ids.reshape(rows * cols, 3)


def schedule(steps: int, image_tokens: int) -> list[float]:
    """Times from 1 to 0, shifted towards high noise for large images (Flux's resolution-dependent shift)."""
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (image_tokens - 256)
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    shifted = math.exp(mu) / (math.exp(mu) + (1 / times - 1))
    return [float(t) for t in shifted]


def noise(seed: int, height: int, width: int, *, channels: int, device: torch.device) -> torch.Tensor:
    """The starting latents of one item: bf16 normal noise from the item's own generator, packed."""
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (1, channels, 2 * math.ceil(height / 16), 2 * math.ceil(width / 16))
    return pack(torch.randn(shape, generator=generator, device=device, dtype=torch.bfloat16))


Velocity = Callable[[torch.Tensor, Pass, torch.Tensor], torch.Tensor]


def euler(
    x: torch.Tensor,
    passes: Sequence[Pass],
    combine: Callable[[list[torch.Tensor]], torch.Tensor],
    times: Sequence[float],
    velocity: Velocity,
) -> torch.Tensor:
    """Integrate from times[0] to times[-1]; each step runs every pass and `combine`s their velocities.

    No host sync: times are host floats, everything else stays on the device.
    """
    tokens = x.shape[1]
    for now, after in itertools.pairwise(times):
        t = torch.full((x.shape[0],), now, dtype=x.dtype, device=x.device)
        predictions = []
        for p in passes:
            image = x if p.source is None else torch.cat([x, p.source], dim=1)
            predictions.append(velocity(image, p, t)[:, :tokens])
        x = x + (after - now) * combine(predictions)
    return x
