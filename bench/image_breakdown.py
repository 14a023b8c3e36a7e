"""Where one image's time goes through the `ovis-u1` backend: the condition passes through the LLM, the DiT
(backbone) passes, the VAE encode (edits) and decode, and the rest (host work such as preprocessing and PIL
conversions, the guidance arithmetic, copies, and the device waiting for the host); and where one caption
micro-batch's goes: the visual tokenizer, the multimodal merge, the decoder's prefill, steps and captures.

Each part is found by wrapping its callable for the length of one item: the backend's condition pass
(`gpu_model.ovis_u1_conditions.condition`, over the model's own merge and LLM, or its generate_condition),
the generator backbone's `forward` (the CUDA-graph wrapper where the backend installed one), `vae.encode` and
`vae.decode`. On a GPU a part's time is the span between CUDA events recorded around each call, read once the
item is done (the host is not made to wait in between); elsewhere it is the host's clock.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable, Iterator
from typing import Any

#: The parts timed, each as (what holds the callable, the callable's attribute name), from the model.
PARTS: dict[str, Callable[[Any], tuple[Any, str]]] = {
    "condition": lambda model: (importlib.import_module("gpu_model.ovis_u1_conditions"), "condition"),
    "backbone": lambda model: (model.visual_generator.backbone, "forward"),
    "vae_encode": lambda model: (model.visual_generator.vae, "encode"),
    "vae_decode": lambda model: (model.visual_generator.vae, "decode"),
}


#: The parts of a greedy caption call: the visual tokenizer (vision tower and its head), the model's
#: multimodal merge (which runs the visual tokenizer inside it), the decoder's prefill and its whole run
#: (prefill and every step), and the decode graphs it captured for new shapes.
CAPTION_PARTS: dict[str, Callable[[Any, Any], tuple[Any, str]]] = {
    "visual_tokenizer": lambda model, decoder: (model.visual_tokenizer, "forward"),
    "merge_multimodal": lambda model, decoder: (model, "merge_multimodal"),
    "prefill": lambda model, decoder: (decoder, "_prefill"),
    "decoder": lambda model, decoder: (decoder, "generate"),
    "graph_capture": lambda model, decoder: (decoder, "_capture_fastest"),
}


class Spans:
    """Start and end marks of each call to one part: CUDA events on a GPU, host clock readings elsewhere."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list[tuple[Any, Any]] = []
        self.host_s = 0.0

    def mark(self) -> Any:
        """A point in time on the device's stream (CUDA) or the host's clock."""
        if not self.cuda:
            return time.perf_counter()
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self) -> float:
        """The calls' total; on CUDA, only once the device has run past the last mark."""
        if self.cuda:
            return float(sum(start.elapsed_time(end) for start, end in self.marks)) / 1000
        return float(sum(end - start for start, end in self.marks))


@contextlib.contextmanager
def timed(owner: Any, name: str, spans: Spans) -> Iterator[None]:
    """`owner.name` timed into `spans` within the block; the owner's own attribute is back afterwards."""
    had_own = name in vars(owner)
    original = getattr(owner, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        start, host_start = spans.mark(), time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spans.marks.append((start, spans.mark()))
            spans.host_s += time.perf_counter() - host_start

    setattr(owner, name, call)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)


def image_breakdown(backend: Any, run: Callable[[], Any], device: str) -> dict[str, Any]:
    """Run one item (`run`) through the loaded backend and say where its seconds went."""
    cuda = device.startswith("cuda")
    model = backend.model
    spans = {part: Spans(cuda) for part in PARTS}
    graphs = getattr(backend._pipeline, "dit_graphs", None)
    before = (graphs.captures, graphs.replays, graphs.capture_s) if graphs is not None else None
    total = _timed_run({part: where(model) for part, where in PARTS.items()}, spans, run, cuda)
    result: dict[str, Any] = {
        "what": "one more item through the backend; each part timed " + _HOW[cuda],
        "total_s": round(total, 4),
        **_summary(spans),
    }
    result["rest_s"] = round(total - sum(s.seconds() for s in spans.values()), 4)
    if graphs is not None and before is not None:
        result["dit_graphs"] = {
            "captures": graphs.captures - before[0],
            "replays": graphs.replays - before[1],
            "capture_s": round(graphs.capture_s - before[2], 4),
        }
    return result


def caption_breakdown(backend: Any, run: Callable[[], Any], device: str) -> dict[str, Any]:
    """Run one caption micro-batch (`run`) through the loaded backend and say where its seconds went
    (parts that nest are each timed whole: the merge holds the visual tokenizer, the decoder the prefill)."""
    cuda = device.startswith("cuda")
    model, decoder = backend.model, getattr(backend._pipeline, "decoder", None)
    parts = {
        part: where
        for part, where in CAPTION_PARTS.items()
        if decoder is not None or part not in ("prefill", "decoder", "graph_capture")
    }
    spans = {part: Spans(cuda) for part in parts}
    total = _timed_run({part: where(model, decoder) for part, where in parts.items()}, spans, run, cuda)
    return {
        "what": "one more caption micro-batch through the backend; each part timed "
        + _HOW[cuda]
        + "; the merge holds the visual tokenizer, the decoder the prefill and any graph capture",
        "total_s": round(total, 4),
        **_summary(spans),
    }


_HOW = {True: "on the GPU between CUDA events around each call", False: "by the host's clock"}


def _timed_run(
    where: dict[str, tuple[Any, str]], spans: dict[str, Spans], run: Callable[[], Any], cuda: bool
) -> float:
    """Seconds `run` takes with each part's callable (where it exists) timed into its spans."""
    import torch

    with contextlib.ExitStack() as stack:
        for part, (owner, name) in where.items():
            if hasattr(owner, name):
                stack.enter_context(timed(owner, name, spans[part]))
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started


def _summary(spans: dict[str, Spans]) -> dict[str, Any]:
    return {
        part: {"calls": len(s.marks), "s": round(s.seconds(), 4), "host_s": round(s.host_s, 4)}
        for part, s in spans.items()
    }
