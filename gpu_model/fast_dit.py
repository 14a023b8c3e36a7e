"""Fast paths for diffusion transformers: fused QKV projections, the fastest SDPA kernel for the shapes at
hand, regional `torch.compile` of the repeated blocks, one CUDA graph per pass shape, and a cache of
conditions shared across items.

The DiT of a 1 MP image is compute-bound (thousands of tokens per pass), so batching items gains little; what
pays is less work per kernel launch (fusion by Inductor), the best attention kernel (cuDNN or FlashAttention
through PyTorch's SDPA: flash-attn itself is not needed), no host in the loop (a pass launches hundreds of
kernels, and launching them costs the CPU about as long as they take to run: replaying a captured graph
launches them at once) and no recomputation of what every item shares.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

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
    from gpu_model.decode_kernels import tolerate_compile_failures

    # A block that fails to compile runs eagerly (logged) rather than failing the item; repeated blocks may
    # each be guarded separately, so leave room for all of them.
    tolerate_compile_failures()
    count = 0
    for block in blocks:
        block.compile(mode=mode, dynamic=dynamic)
        count += 1
    return count


def compile_vae(vae: Any) -> int:
    """Compile a VAE's encoder and decoder in place (convolutions stay cuDNN's; Inductor fuses the group
    norms and activations between them, most of a 1 MP decode's time). Shapes are specialised on first use
    and made dynamic when a second size comes. Returns how many parts were compiled."""
    count = 0
    for name in ("encoder", "decoder"):
        part = getattr(vae, name, None)
        if isinstance(part, nn.Module):
            part.compile(dynamic=None)
            count += 1
    return count


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[Any]
    output: Any


class GraphedCall:
    """`fn` over CUDA tensors, replayed from one captured CUDA graph per input signature (shapes, dtypes and
    the non-tensor arguments): the first call of a signature warms up and captures, later calls copy their
    tensors into the graph's inputs, replay, and return a copy of the outputs (the next replay overwrites
    the graph's own). A signature whose warm-up synchronises with the host or fails runs as plain calls
    from then on (logged); so does every call off CUDA. `fn` must not change its behaviour between calls
    with the same signature. At most `size` graphs are kept (least recently used dropped), all in one
    memory pool: replays are sequential, so their intermediates can share it."""

    def __init__(self, fn: Callable[..., Any], *, size: int = 64, warmup: int = 2, name: str = "") -> None:
        if warmup < 1:
            raise ValueError("warmup must be at least 1")
        self.fn = fn
        self.size = size
        self.warmup = warmup
        self.name = name or getattr(fn, "__qualname__", "call")
        self._graphs: OrderedDict[Hashable, _Captured] = OrderedDict()
        self._refused: set[Hashable] = set()
        self._pool: Any = None
        self._stream: Any = None
        self.captures = 0
        self.replays = 0
        #: Seconds spent warming up and capturing (the device drained by each capture included).
        self.capture_s = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        if not tensors or not all(t.is_cuda for t in tensors):
            return self.fn(*args, **kwargs)
        key = (
            str(spec),
            tuple(
                (tuple(x.shape), x.dtype, x.device, x.stride()) if isinstance(x, torch.Tensor) else x
                for x in leaves
            ),
        )
        try:
            captured = self._graphs.get(key)
        except TypeError:  # an argument that cannot be part of a signature
            return self.fn(*args, **kwargs)
        if captured is None:
            if key in self._refused:
                return self.fn(*args, **kwargs)
            captured = self._capture(key, leaves, spec)
            if captured is None:
                return self.fn(*args, **kwargs)
        else:
            self._graphs.move_to_end(key)
            for static, leaf in zip(captured.inputs, leaves, strict=True):
                if isinstance(static, torch.Tensor):
                    static.copy_(leaf)
        captured.graph.replay()
        self.replays += 1
        return pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, captured.output)

    def _run_checked(self, args: Any, kwargs: Any, mode: str) -> bool:
        """Run fn under CUDA sync-debug `mode` ("warn": True when it made no host sync; "error": raises on
        the first one)."""
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode(mode)
            try:
                self.fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        return not any("synchroniz" in str(w.message) for w in caught)

    def _capture(self, key: Hashable, leaves: list[Any], spec: Any) -> _Captured | None:
        started = time.perf_counter()
        try:
            captured = self._warm_and_capture(key, leaves, spec)
        finally:
            self.capture_s += time.perf_counter() - started
        if captured is not None:
            # A first use at this shape: the warm-up runs (and compiles) inside a model call, so say so.
            largest = max((leaf for leaf in leaves if isinstance(leaf, torch.Tensor)), key=torch.numel)
            log.info(
                "%s: warmed up and captured a CUDA graph for a new shape (largest input %s) in %.1fs; "
                "%d shapes kept",
                self.name,
                list(largest.shape),
                time.perf_counter() - started,
                len(self._graphs),
            )
        return captured

    def _warm_and_capture(self, key: Hashable, leaves: list[Any], spec: Any) -> _Captured | None:
        inputs = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        args, kwargs = pytree.tree_unflatten(inputs, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):  # compilation, autotuning and lazy initialisation happen here
                # The run before the capture must make no host sync: a capture that fails half-way leaves
                # CUDA's random generator marked as capturing, so a function that syncs is never captured.
                # The first run may sync while it compiles; if it did, later runs are held to "error".
                clean = self._run_checked(args, kwargs, "warn")
                for _ in range(self.warmup - 1):
                    if clean:
                        break
                    clean = self._run_checked(args, kwargs, "error")
                if not clean:
                    raise RuntimeError("a synchronizing CUDA operation in every warm-up run")
        except Exception as exc:
            self._refused.add(key)
            log.warning("%s: not captured in a CUDA graph (%s); running it plainly", self.name, exc)
            return None
        finally:
            torch.cuda.current_stream().wait_stream(side)
        while len(self._graphs) >= self.size:
            self._graphs.popitem(last=False)
        graph, output = self._record(args, kwargs)
        self.captures += 1
        captured = self._graphs[key] = _Captured(graph, inputs, output)
        return captured

    def _record(self, args: Any, kwargs: Any) -> tuple[torch.cuda.CUDAGraph, Any]:
        """Capture one call into a graph of the shared pool. Unlike `torch.cuda.graph`, the device is not
        drained nor the allocators' caches emptied first: a capture executes nothing, replays run in stream
        order, and emptying the caches would make every later allocation (pinned copies included) ask the
        driver again."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            self._stream = torch.cuda.Stream()
        graph = torch.cuda.CUDAGraph()
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
            try:
                output = self.fn(*args, **kwargs)
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(self._stream)
        return graph, output


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
