"""Fast paths for diffusion transformers: fused QKV projections, the fastest SDPA kernel for the shapes at
hand, regional `torch.compile` of the repeated blocks, and a cache of conditions shared across items.

The DiT of a 1 MP image is compute-bound (thousands of tokens per pass), so batching items gains little; what
pays is less work per kernel launch (fusion by Inductor), the best attention kernel (cuDNN or FlashAttention
through PyTorch's SDPA: flash-attn itself is not needed) and no recomputation of what every item shares.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

V = TypeVar("V")

#: SDPA kernels tried on CUDA, fastest first on Hopper as a rule (each is timed: the rule is not trusted).
CANDIDATE_BACKENDS = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")


def fuse_qkv(module: nn.Module) -> int:
    """Fuse the Q, K and V projections (and the text stream's) of every diffusers Attention in `module` into
    one matrix product each; returns how many were fused."""
    from diffusers.models.attention_processor import Attention, FusedFluxAttnProcessor2_0

    count = 0
    for attention in module.modules():
        if isinstance(attention, Attention):
            attention.fuse_projections(fuse=True)
            attention.set_processor(FusedFluxAttnProcessor2_0())
            count += 1
    return count


def _time_backend(name: str, shapes: list[tuple[int, ...]], dtype: torch.dtype, repeats: int) -> float | None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, name)
    total = 0.0
    for shape in shapes:
        q, k, v = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(3))
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, k, v)  # warm-up, and refusal of unsupported shapes
                times = []
                for _ in range(repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    F.scaled_dot_product_attention(q, k, v)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
        except RuntimeError as exc:
            log.info("SDPA backend %s refused %s: %s", name, shape, str(exc).splitlines()[0])
            return None
        total += statistics.median(times)
    return total


def pick_sdpa_backend(
    shapes: Iterable[tuple[int, ...]], dtype: torch.dtype = torch.bfloat16, repeats: int = 5
) -> tuple[str | None, dict[str, float | None]]:
    """Time each SDPA backend on `shapes` ([batch, heads, tokens, head_dim]) and return the fastest's name
    with every timing in ms (None: refused). (None, {}) without CUDA: PyTorch's own choice stands."""
    if not torch.cuda.is_available():
        return None, {}
    shapes = list(shapes)
    timings = {name: _time_backend(name, shapes, dtype, repeats) for name in CANDIDATE_BACKENDS}
    usable = {name: ms for name, ms in timings.items() if ms is not None}
    best = min(usable, key=lambda name: usable[name]) if usable else None
    log.info("SDPA backend timings (ms): %s -> %s", timings, best)
    return best, timings


@contextlib.contextmanager
def sdpa_backend(name: str | None) -> Iterator[None]:
    """Run the block with SDPA preferring backend `name`, the math kernel as a fallback. Priority is explicit:
    PyTorch's default order puts cuDNN after the math kernel."""
    if name is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, name), SDPBackend.MATH], set_priority=True):
        yield


def compile_blocks(
    blocks: Iterable[nn.Module], *, mode: str | None = None, dynamic: bool | None = True
) -> int:
    """Compile each block on its own ("regional" compilation): identical blocks share one compiled graph,
    so compile time stays a fraction of a whole-model compile. `dynamic=True` compiles once for every
    sequence length (prompt lengths vary per item). Returns how many blocks were wrapped."""
    from gpu_model.fast_decode import tolerate_compile_failures

    # A block that fails to compile runs eagerly (logged) rather than failing the item; repeated blocks may
    # each be guarded separately, so leave room for all of them.
    tolerate_compile_failures()
    count = 0
    for block in blocks:
        block.compile(mode=mode, dynamic=dynamic)
        count += 1
    return count


class ConditionCache(Generic[V]):
    """A small LRU of conditions every item of a kind shares (the unconditional prompt on a blank image of
    a size): computed once per key instead of once per item."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The cached value of `key`, computing and keeping it on a miss."""
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        value = self._entries[key] = compute()
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()


def describe(module: Any) -> str:
    """A one-line summary of a module's parameters, for logs."""
    parameters = list(module.parameters())
    count = sum(p.numel() for p in parameters)
    dtype = parameters[0].dtype if parameters else None
    return f"{type(module).__name__}: {count / 1e6:.1f}M parameters, {dtype}"
