"""GPU throughput of Ovis-U1: the model alone and the whole system (a real `ovis-batch worker` process, the
folder broker or --broker-url, SQLite, local storage), on one of two backends.

`--backend ovis-u1-shaped` (default): Ovis-U1-3B's architecture at full size from library components with
random weights, its size and FLOPs checked against the real model's first (printed); captioning (448 px
images, 128 new tokens), text-to-image (1024 x 1024, 50 steps), editing (1024 x 1024 inputs, 50 steps); the
official way at batch 1 and the fast paths at the best batch.

`--backend ovis-u1 --model-path DIR`: the real remote code (a directory from bench/build_ovis_u1_model.py,
random weights, or the real weights) through the `ovis-u1` backend, on inputs like users have
(bench/realistic_inputs.py): JPEG photos of 256-1280 px with per-caption length limits of 40-400 tokens,
prompts of many lengths, edits of mixed sizes; `cold_start_s` is a fresh worker process with empty caches
to its first result. See bench/gpu_ovis_u1.py.

    python bench/gpu_throughput.py                               # on a GPU host, the shaped backend
    python bench/gpu_throughput.py --backend ovis-u1 --model-path /tmp/Ovis-U1-3B-random
    python bench/gpu_throughput.py --smoke                       # every section at tiny sizes on the CPU
    python bench/gpu_throughput.py --backend ovis-u1 --model-path /tmp/ovis-u1-tiny --smoke

Every run writes its own raw file, bench/results/gpu_throughput-<UTC time>-<gpu>.json (a smoke run: a
temporary folder unless --out), with the date, git commit, machine, library versions and command line
(bench/gpu_results.py, on bench/raw_result.py); it never changes another file. Prints one JSON object as
its last line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_results import RunFile, provenance, run_section  # noqa: E402 - bench/ is on sys.path
from gpu_system import log as _log  # noqa: E402
from gpu_system import run_job, start_worker, stop_worker, wait_ready, worker_env  # noqa: E402

TASKS = ("caption", "generate", "edit")
EDIT_INSTRUCTION = "make the sky a deep orange and add a small red boat"
PROMPTS = (
    "a lighthouse on a cliff at dusk",
    "a bowl of ramen with a soft-boiled egg, overhead shot",
    "an astronaut riding a horse across a desert, film grain",
    "a watercolor of a fox in the snow",
)


@dataclass
class Plan:
    """Sizes of one run: full on a GPU, tiny on the CPU (--smoke)."""

    smoke: bool
    device: str
    new_tokens: int
    image_side: int
    caption_side: int
    steps: int
    caption_batches: list[int]
    batch1_compare: int
    model_images: int
    system_items: dict[str, int]
    chunk_size: int
    budget_s: float
    #: `ovis-batch worker --gpus`: "none" runs one worker on the default device, "0,1" one per GPU.
    gpus: str = "none"
    system_tasks: tuple[str, ...] = TASKS
    #: The system run's broker; "" is the embedded default (a folder, whose messages of one millisecond
    #: come in random order).
    broker_url: str = ""
    #: The result file's name without its suffix: the worker log is named after it.
    run_name: str = "gpu_throughput"
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.budget_s - (time.monotonic() - self.started)


# -- compute check ---------------------------------------------------------------------------------------
def compute_check() -> dict[str, Any]:
    """The stand-in's parameters and FLOPs (PyTorch's FLOP counter on the meta device) against the real
    model's (formulas from its architecture) and the reference's parameter counts; printed as a table."""
    from gpu_model.shaped_compute import caption_work, image_work, measure_stand_in

    census = measure_stand_in()
    rows = ["part                         stand-in       real      ratio   reference"]
    for part, real in census["params_real"].items():
        ours = census["params_stand_in"][part]
        reference = census["params_reference"][part]
        rows.append(
            f"params {part:21} {ours / 1e9:8.3f}B {real / 1e9:8.3f}B {ours / real:8.4f} "
            f"{reference / 1e9:8.2f}B"
        )
    for part, real in census["flops_real"].items():
        ours = census["flops_stand_in"][part]
        rows.append(f"flops  {part:21} {ours / 1e12:7.3f}T {real / 1e12:8.3f}T {ours / real:8.4f}")
    print("\n".join(rows), flush=True)
    ratios = [census["flops_stand_in"][k] / v for k, v in census["flops_real"].items()]
    ratios += [census["params_stand_in"][k] / v for k, v in census["params_reference"].items()]
    per_item = {
        "caption_448px_128_tokens_tflop": caption_work(300, 128).total / 1e12,
        "t2i_1024_50_steps_tflop": image_work(
            steps=50, image_tokens=4096, text_tokens=[300, 270], source_passes=0, conditions=1
        ).total
        / 1e12,
        "edit_992_50_steps_tflop": image_work(
            steps=50, image_tokens=3844, text_tokens=[290, 270, 270], source_passes=1, conditions=2
        ).total
        / 1e12,
    }
    return {
        **census,
        "max_deviation": max(abs(r - 1) for r in ratios),
        "per_item_tflop_real": {k: round(v, 1) for k, v in per_item.items()},
        "method": "stand-in: torch.utils.flop_counter.FlopCounterMode over the full-size modules on the meta "
        "device; real: gpu_model/shaped_compute.py formulas from Ovis-U1's architecture",
    }


# -- inputs ------------------------------------------------------------------------------------------------
def synthetic_image(index: int, width: int, height: int) -> Any:
    """A smooth, compressible, distinct test picture (gradients and a block), not noise."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = index * 0.37
    red = 127 + 120 * np.sin(x / (23 + index % 17) + phase)
    green = 127 + 120 * np.cos(y / (31 + index % 13) - phase)
    blue = (x + y + 9 * index) % 256
    pixels = np.stack([red, green, blue], axis=-1).astype(np.uint8)
    top, left = (index * 37) % (height // 2), (index * 53) % (width // 2)
    pixels[top : top + height // 4, left : left + width // 4] = (index * 29 % 256, 40, 200)
    return Image.fromarray(pixels)


def write_inputs(folder: Path, plan: Plan) -> dict[str, Path]:
    """PNG files and manifests for the system run."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = folder / "photos"
    photos.mkdir(exist_ok=True)
    side = plan.caption_side

    def save_photo(index: int) -> None:
        synthetic_image(index, side, side).save(photos / f"p{index:06d}.png", compress_level=1)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(save_photo, range(plan.system_items["caption"])))
    prompts = folder / "prompts.txt"
    prompts.write_text(
        "".join(f"{PROMPTS[k % len(PROMPTS)]}, variant {k}\n" for k in range(plan.system_items["generate"]))
    )
    sources = folder / "sources"
    sources.mkdir(exist_ok=True)
    records = []
    for k in range(plan.system_items["edit"]):
        name = f"s{k:03d}.png"
        synthetic_image(1000 + k, plan.image_side, plan.image_side).save(sources / name, compress_level=1)
        records.append(
            json.dumps({"id": f"edit{k:03d}", "image": f"sources/{name}", "instruction": EDIT_INSTRUCTION})
        )
    edits = folder / "edits.jsonl"
    edits.write_text("\n".join(records) + "\n")
    return {"caption": photos, "generate": prompts, "edit": edits}


# -- model alone ---------------------------------------------------------------------------------------------
def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Result and wall seconds, the device drained before and after."""
    _sync()
    start = time.perf_counter()
    result = fn()
    _sync()
    return result, time.perf_counter() - start


def _backend(plan: Plan, *, fast: bool, caption_batch: int) -> Any:
    from gpu_model.base import BackendOptions
    from gpu_model.shaped import ShapedBackend

    options = BackendOptions(device=plan.device, max_batch={"caption": caption_batch})
    backend = ShapedBackend(options, fast=fast)
    _, seconds = timed(backend.load)
    _log(f"built the {'fast' if fast else 'official'} backend ({backend.scale}) in {seconds:.1f}s")
    return backend


def _free(backend: Any, *, compiled: bool = True) -> None:
    """Drop a backend (or, with None, only garbage) and give its memory back; `compiled=False` keeps
    torch.compile's caches, which later calls of a live backend still use."""
    import torch

    del backend
    gc.collect()
    if torch.cuda.is_available():
        if compiled:
            import torch._dynamo

            torch._dynamo.reset()
        torch.cuda.empty_cache()


def _caption_requests(plan: Plan, count: int, offset: int = 0) -> list[Any]:
    from gpu_model.requests import CaptionRequest
    from gpu_model.shaped_defaults import CAPTION_PROMPT

    side = plan.caption_side
    return [
        CaptionRequest(synthetic_image(offset + k, side, side), CAPTION_PROMPT, plan.new_tokens)
        for k in range(count)
    ]


def _generate_request(plan: Plan, k: int) -> Any:
    from gpu_model.requests import GenerateRequest

    side = plan.image_side
    return GenerateRequest(PROMPTS[k % len(PROMPTS)], side, side, plan.steps, seed=100 + k, txt_cfg=5.0)


def _edit_request(plan: Plan, k: int) -> Any:
    from gpu_model.requests import EditRequest

    side = plan.image_side
    source = synthetic_image(1000 + k, side, side)
    return EditRequest(source, EDIT_INSTRUCTION, plan.steps, seed=200 + k, img_cfg=1.5, txt_cfg=6.0)


def _max_pixel_diff(a: Any, b: Any) -> int:
    import numpy as np

    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def _peak_gb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def model_official(plan: Plan, results: dict[str, Any], keep: dict[str, Any]) -> None:
    """(a) The official scripts' way: `generate` for one caption, images one at a time, eager DiT."""
    backend = _backend(plan, fast=False, caption_batch=1)
    warm = _caption_requests(plan, 1)[0]
    backend.caption_tokens([replace(warm, max_new_tokens=2)])
    request = _caption_requests(plan, 1)[0]
    tokens, seconds = timed(lambda: backend.caption_tokens([request]))
    keep["official_caption_tokens"] = tokens[0].tolist()
    results["tasks"]["caption"].update(
        batch1_items_per_s=round(1 / seconds, 4), batch1_s_per_item=round(seconds, 3)
    )
    _log(f"official caption, batch 1: {seconds:.2f}s")
    for task, make in (("generate", _generate_request), ("edit", _edit_request)):
        method = backend.generate if task == "generate" else backend.edit
        first = make(plan, 0)
        method([replace(first, steps=1)])  # warm-up: kernels, allocator
        images, seconds = timed(partial(method, [first]))
        keep[f"official_{task}_image"] = images[0]
        results["tasks"][task].update(
            batch1_items_per_s=round(1 / seconds, 4), batch1_s_per_item=round(seconds, 3)
        )
        _log(f"official {task}, batch 1: {seconds:.2f}s per item")
    _free(backend)


def model_fast(plan: Plan, results: dict[str, Any], keep: dict[str, Any]) -> None:
    """(b) The fast paths at the best batch size, and batch-1 vs best-batch outputs."""
    backend = _backend(plan, fast=True, caption_batch=max(plan.caption_batches))
    _, warm_s = timed(backend.warmup)
    _log(f"fast backend warm-up (compile, graph capture): {warm_s:.1f}s; SDPA backend {backend.attention}")
    results["fast_backend"] = {
        "warmup_s": round(warm_s, 1),
        "sdpa_backend": backend.attention,
        "sdpa_timings_ms": backend.attention_timings,
    }
    caption = results["tasks"]["caption"]
    _reset_peak()
    sweep: dict[str, float] = {}
    best, best_rate, best_tokens = 0, 0.0, None
    requests = _caption_requests(plan, max(plan.caption_batches))
    for size in plan.caption_batches:
        if plan.left() < 60:
            _log(f"budget: caption sweep stops before batch {size}")
            break
        batch = requests[:size]
        backend.caption(batch)  # the first call at a shape captures its graph
        tokens, seconds = timed(partial(backend.caption_tokens, batch))
        _, caption_s = timed(partial(backend.caption, batch))
        rate = size / caption_s
        sweep[str(size)] = round(rate, 1)
        _log(f"fast caption, batch {size}: {caption_s:.2f}s ({rate:.1f}/s; tokens alone {seconds:.2f}s)")
        if rate > best_rate:
            best, best_rate, best_tokens = size, rate, tokens
    caption.update(model_items_per_s=round(best_rate, 2), best_batch=best, sweep_items_per_s=sweep)
    caption["peak_gpu_mem_gb"] = _peak_gb()
    compare = min(plan.batch1_compare, best)
    alone = [backend.caption_tokens([r])[0] for r in requests[:compare]]
    assert best_tokens is not None
    exact = [a.tolist() == best_tokens[k].tolist() for k, a in enumerate(alone)]
    prefix = [_common_prefix(a.tolist(), best_tokens[k].tolist()) for k, a in enumerate(alone)]
    official = keep.get("official_caption_tokens")
    caption["batch_vs_batch1"] = {
        "items": compare,
        "exact_match_rate": sum(exact) / len(exact),
        "mean_matching_prefix_tokens": statistics.mean(prefix),
        "official_generate_vs_fast_matching_prefix_tokens": (
            _common_prefix(official, alone[0].tolist()) if official is not None else None
        ),
        "new_tokens": plan.new_tokens,
        "first_token_logits": _logit_drift(backend, requests[:best]),
    }
    if backend._decoder is not None:  # image peaks without the caption caches (a worker keeps both)
        backend._decoder.release()
        _free(None, compiled=False)
    for task, make in (("generate", _generate_request), ("edit", _edit_request)):
        method = backend.generate if task == "generate" else backend.edit
        _reset_peak()
        items = [make(plan, k) for k in range(plan.model_images if task == "generate" else 2)]
        method([replace(items[0], steps=1)])  # the first use at this size compiles and captures: untimed
        images, seconds = timed(partial(method, items))
        results["tasks"][task].update(
            model_items_per_s=round(len(items) / seconds, 4),
            model_s_per_item=round(seconds / len(items), 3),
            best_batch=1,
            peak_gpu_mem_gb=_peak_gb(),
        )
        _log(f"fast {task}: {seconds / len(items):.2f}s per item")
        # Batch invariance needs no 50 steps: the same two items, alone and together, at 10 steps.
        short = [replace(item, steps=min(10, plan.steps)) for item in (items[0], items[1 % len(items)])]
        alone, pair = method(short[:1])[0], method([short[1], short[0]])
        official = keep.get(f"official_{task}_image")
        compared = results["tasks"][task].setdefault("batch_vs_batch1", {})  # a merged run's figures stay
        compared["max_pixel_diff_in_batch_of_2_vs_alone"] = _max_pixel_diff(pair[1], alone)
        if official is not None:
            compared["max_pixel_diff_official_vs_fast_50_steps"] = _max_pixel_diff(official, images[0])
    if plan.left() > 40:
        results["profile"] = profile(backend, plan, requests[:best])
    decoder = backend._decoder
    results["fast_backend"].update(
        decode_graph_error=decoder.capture_error if decoder else None,
        decode_attention_ms_per_step=decoder.variant_timings if decoder else None,
        dit_cuda_graphs=(
            {
                "captures": backend.dit_graphs.captures,
                "replays": backend.dit_graphs.replays,
                "capture_s": round(backend.dit_graphs.capture_s, 2),
            }
            if backend.dit_graphs is not None
            else None
        ),
        dynamo_counters=_dynamo_counters(),
    )
    _free(backend)


def _kernel_table(fn: Callable[[], Any], rows: int = 12) -> dict[str, Any]:
    """CUDA time by operator while `fn` runs (torch.profiler): where a phase's time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        _sync()
    events = prof.key_averages()

    def device_ms(event: Any, own: bool = False) -> float:
        name = ("self_" if own else "") + "device_time_total"
        legacy = ("self_" if own else "") + "cuda_time_total"
        return float(getattr(event, name, getattr(event, legacy, 0.0))) / 1000

    top = sorted(events, key=lambda e: device_ms(e, own=True), reverse=True)[:rows]
    return {
        "device_ms_total": round(sum(device_ms(e, own=True) for e in events), 1),
        "top": [{"op": e.key[:90], "ms": round(device_ms(e, own=True), 2), "calls": e.count} for e in top],
    }


def _eager_step_kernels(backend: Any) -> dict[str, Any]:
    """One decode step run eagerly (not replayed): how many kernels it launches and their device time."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from gpu_model.decode_kernels import decode_attention_enabled

    decoder = backend._decoder
    slot = next(iter(decoder._slots.values()))
    with torch.inference_mode(), decode_attention_enabled(decoder.model, slot.variant or "sdpa"):
        decoder._step(slot)  # warm
        _sync()
        activities = [ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU]
        with torch_profile(activities=activities) as prof:
            decoder._step(slot)
            _sync()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy = sum(float(getattr(e, "device_time", getattr(e, "cuda_time", 0.0))) for e in kernels) / 1000
    return {
        "batch": slot.batch,
        "cache_len": slot.length,
        "kernels": len(kernels),
        "kernel_ms": round(busy, 2),
    }


def _logit_drift(backend: Any, batch: list[Any]) -> dict[str, float]:
    """How far batching moves row 0's first-token logits (bf16 kernels differ with the batch size), next to
    the gap between its two best logits: a flip needs a drift at least that large."""
    import torch

    from gpu_model.shaped_defaults import CAPTION_PROMPT

    def logits(requests: list[Any]) -> torch.Tensor:
        with torch.inference_mode():
            ids, mask = backend._tokenize([backend._prompt(CAPTION_PROMPT, answer=True)] * len(requests))
            embeds = backend._embed(ids, backend._pixels([r.image for r in requests]))
            out = backend.parts.llm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=1).logits
            return out[0, -1].float()

    alone, together = logits(batch[:1]), logits(batch)
    top = torch.topk(alone, 2).values
    return {
        "max_abs_diff": round(float((alone - together).abs().max()), 4),
        "logit_std": round(float(alone.std()), 4),
        "top2_gap": round(float(top[0] - top[1]), 4),
        "argmax_equal": bool(alone.argmax() == together.argmax()),
    }


def _dynamo_counters() -> dict[str, Any]:
    """Compiled frames, recompilations and graph breaks so far in this process."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    keep = ("stats", "frames", "recompiles", "graph_break", "unimplemented")
    return {name: dict(values) for name, values in counters.items() if name in keep and values}


def profile(backend: Any, plan: Plan, batch: list[Any]) -> dict[str, Any]:
    """Where the fast path's time goes: caption prefill vs decode steps; one DiT pass of each shape with its
    achieved TFLOP/s; conditioning and VAE."""
    import torch
    from PIL import Image

    from gpu_model.fast_dit import sdpa_backend
    from gpu_model.shaped_compute import dit_pass_flops
    from gpu_model.shaped_defaults import GENERATE_PREFIX
    from gpu_model.shaped_sampling import image_ids, noise

    out: dict[str, Any] = {}
    one = [replace(r, max_new_tokens=1) for r in batch]
    try:
        out["caption_first_token_kernels"] = _kernel_table(lambda: backend.caption_tokens(one))
        out["caption_eager_decode_step"] = _eager_step_kernels(backend)
    except Exception as exc:  # the profile is a diagnosis, never a reason to lose the figures
        out["profiler_error"] = f"{type(exc).__name__}: {exc}"
    _, first_s = timed(lambda: backend.caption_tokens(one))
    _, full_s = timed(lambda: backend.caption_tokens(batch))
    out["caption"] = {
        "batch": len(batch),
        "vision_prefill_first_token_s": round(first_s, 3),
        "decode_step_ms": round(1000 * (full_s - first_s) / max(1, plan.new_tokens - 1), 2),
    }
    side, device = plan.image_side, backend.parts.table.weight.device
    blank = Image.new("RGB", (side, side), (255, 255, 255))
    with torch.inference_mode():
        cond, cond_s = timed(lambda: backend._condition(GENERATE_PREFIX + PROMPTS[0], blank))
        ids = image_ids(side, side, frame=0, device=device)
        x = noise(1, side, side, channels=backend.parts.cfg.latent_channels, device=device)
        x = x.to(backend.parts.table.weight.dtype)
        t = torch.full((1,), 0.5, dtype=x.dtype, device=device)
        out["condition_s"] = round(cond_s, 4)
        both = torch.cat([ids, image_ids(side, side, frame=1, device=device)])
        for name, image, pass_ids in (("t2i", x, ids), ("edit_with_source", torch.cat([x, x], 1), both)):
            p = backend._pass(cond, pass_ids)
            with sdpa_backend(backend.attention):
                backend._velocity(image, p, t)
                _, seconds = timed(partial(_repeat, 5, backend._velocity, image, p, t))
            per_pass = seconds / 5
            flops = dit_pass_flops(image.shape[1], cond.text.shape[1])
            out[f"dit_pass_{name}"] = {
                "tokens": image.shape[1] + cond.text.shape[1],
                "ms": round(1000 * per_pass, 2),
                "tflop_per_s": round(flops / per_pass / 1e12, 1),
            }
        _, vae_s = timed(lambda: backend._image(x, side, side))
        out["vae_decode_s"] = round(vae_s, 4)
    _log(f"profile: {out}")
    return out


def _repeat(times: int, fn: Callable[..., Any], *args: Any) -> list[Any]:
    """`fn(*args)`, `times` times."""
    return [fn(*args) for _ in range(times)]


def _common_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


# -- the system ----------------------------------------------------------------------------------------------
def system(plan: Plan, results: dict[str, Any], out: Path) -> None:
    """(c) A real worker process; jobs submitted through the producer API; timed from submit to job end."""
    from jobs.api import Client
    from jobs.lifecycle import JobKind
    from jobs.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="ovis-gpu-bench-"))
    sources, seconds = timed(lambda: write_inputs(work / "inputs", plan))
    _log(f"wrote system inputs in {seconds:.1f}s")
    caption_batch = int(results["tasks"]["caption"].get("best_batch") or max(plan.caption_batches))
    values = {
        "home": str(work / "home"),
        "backend": "ovis-u1-shaped",
        "device": "cuda" if plan.device != "cpu" else "cpu",
        "caption_batch": str(caption_batch),
        "chunk_size": str(plan.chunk_size),
        "io_threads": "16",
        "input_roots": str(work),
        "storage_url": str(work / "outputs"),
        "queue": f"bench{os.getpid()}",
        "reconcile_interval_s": "0",
        # Torch's own cache folders, which this process filled: the worker's first image of a size reads
        # what the fast section compiled, as a worker over a kept compile cache would.
        "compile_cache": "",
    }
    if plan.broker_url:
        values["broker_url"] = plan.broker_url
    workers = 1 if plan.gpus == "none" else len(plan.gpus.split(","))
    log_path = out / f"{plan.run_name}-worker{'s' * (workers > 1)}.log"
    started = time.monotonic()
    worker = start_worker(worker_env(values), log_path, work, plan.gpus)
    try:
        wait_ready(worker, log_path, workers, timeout=max(60.0, plan.left() - 30))
        ready_s = time.monotonic() - started
        _log(f"worker ready after {ready_s:.1f}s (load + warm-up)")
        results["system_worker" if workers == 1 else f"system_{workers}_workers"] = {
            "ready_s": round(ready_s, 1),
            "caption_batch": caption_batch,
            "chunk_size": plan.chunk_size,
            "workers": workers,
            "gpus": plan.gpus,
            "broker": plan.broker_url.split("://")[0] if plan.broker_url else "filesystem (embedded)",
            "log": log_path.name,
        }
        settings = Settings(**{k: v for k, v in values.items() if k not in ("caption_batch",)})
        client = Client(settings)
        params: dict[str, dict[str, Any]] = {
            "caption": {"max_new_tokens": plan.new_tokens},
            "generate": {"width": plan.image_side, "height": plan.image_side, "steps": plan.steps},
            "edit": {"steps": plan.steps},
        }
        for task in plan.system_tasks:
            if plan.left() < 20:
                _log(f"budget: system {task} skipped")
                results["tasks"][task].setdefault("system", {"skipped": "device budget"})
                continue
            report = run_job(client, JobKind(task), str(sources[task]), params[task], plan.left() - 10)
            suffix = "" if workers == 1 else f"_{workers}_workers"
            results["tasks"][task][f"system{suffix}"] = report
            results["tasks"][task][f"system_items_per_s{suffix}"] = report.get("items_per_s")
            _log(f"system {task}: {report}")
    finally:
        stop_worker(worker)


# -- verdicts and output -------------------------------------------------------------------------------------
def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, met or not (None where a figure is missing)."""

    def ratio(task: str) -> float | None:
        system_rate, model_rate = (
            results["tasks"][task].get("system_items_per_s"),
            results["tasks"][task].get("model_items_per_s"),
        )
        return round(system_rate / model_rate, 3) if system_rate and model_rate else None

    def at_most(task: str, seconds: float) -> bool | None:
        rate = results["tasks"][task].get("system_items_per_s")
        return (1 / rate <= seconds) if rate else None

    caption = results["tasks"]["caption"]
    sys_rate, batch1 = caption.get("system_items_per_s"), caption.get("batch1_items_per_s")
    checks: dict[str, Any] = {
        "caption_system_ge_100_per_s": sys_rate >= 100 if sys_rate else None,
        "caption_system_ge_100x_batch1": sys_rate >= 100 * batch1 if sys_rate and batch1 else None,
        "generate_system_le_1.8_s_per_image": at_most("generate", 1.8),
        "edit_system_le_5.0_s_per_edit": at_most("edit", 5.0),
    }
    for task in TASKS:
        value = ratio(task)
        checks[f"{task}_system_over_model"] = value
        checks[f"{task}_system_ge_0.95_model"] = value >= 0.95 if value is not None else None
    return checks


def shaped_plan(args: argparse.Namespace) -> Plan:
    """The shaped backend's plan: tiny on the CPU (--smoke), full size on a GPU."""
    if args.smoke:
        items = {"caption": 8, "generate": 2, "edit": 2}
        plan = Plan(True, "cpu", 8, 64, 56, 2, [2, 4], 2, 2, items, 4, args.budget_s or 420.0)
    else:
        batches = [int(b) for b in args.caption_batches.split(",")]
        items = {
            "caption": args.caption_items or 4096,
            "generate": args.image_items or 24,
            "edit": args.edit_items or 4,
        }
        plan = Plan(
            False, "cuda", 128, 1024, 448, 50, batches, 8, 3, items, 2048, args.budget_s or 420.0, args.gpus
        )
    plan.system_tasks = tuple(args.system_tasks.split(","))
    plan.broker_url = args.broker_url
    return plan


def run_shaped(args: argparse.Namespace, results: dict[str, Any], run_file: RunFile, log_dir: Path) -> None:
    """The shaped backend's sections: check, official, fast, system."""
    plan = shaped_plan(args)
    plan.run_name = run_file.path.stem
    parts = set((args.parts or "check,official,fast,system").split(","))
    results["plan"] = {
        "new_tokens": plan.new_tokens,
        "caption_side": plan.caption_side,
        "image_side": plan.image_side,
        "steps": plan.steps,
        "caption_batches": plan.caption_batches,
        "system_items": plan.system_items,
        "gpus": plan.gpus,
    }
    keep: dict[str, Any] = {}
    sections: list[tuple[str, Callable[[], None]]] = [
        ("check", lambda: results.__setitem__("compute_check", compute_check())),
        ("official", lambda: model_official(plan, results, keep)),
        ("fast", lambda: model_fast(plan, results, keep)),
        ("system", lambda: system(plan, results, log_dir)),
    ]
    errors = results["errors"]
    for section, run in sections:
        if section not in parts:
            continue
        if plan.left() < 30:
            errors[section] = "skipped: device budget"
            continue
        run_section(section, run, results, plan.left())
        results["targets"] = verdicts(results)
        run_file.write(results)


def _real_parts(given: str | None) -> tuple[str, ...]:
    parts = tuple((given or "system,model").split(","))
    unknown = sorted(set(parts) - {"system", "model"})
    if unknown:
        raise SystemExit(f"--backend ovis-u1 has the parts system and model, not {unknown}")
    return parts


def real_plan(args: argparse.Namespace, log_dir: Path) -> Any:
    """The ovis-u1 backend's plan (bench/gpu_ovis_u1.py)."""
    from gpu_ovis_u1 import TASKS as REAL_TASKS
    from gpu_ovis_u1 import RealPlan, smoke_plan

    if not args.model_path:
        raise SystemExit(
            "--backend ovis-u1 needs --model-path (a directory from bench/build_ovis_u1_model.py)"
        )
    photos = Path(args.photos) if args.photos else None
    if args.smoke:
        return smoke_plan(
            Path(args.model_path), log_dir, args.budget_s or 420.0, photos, _real_parts(args.parts)
        )
    return RealPlan(
        model_path=Path(args.model_path),
        device="cuda",
        smoke=False,
        captions=args.caption_items or 1024,
        prompts=args.image_items or 32,
        edits=args.edit_items or 64,
        model_captions=args.model_caption_items,
        model_images=args.model_image_items,
        steps=args.steps,
        image_size=None,
        long_side=(args.min_side, args.max_side),
        seed=args.seed,
        photos_dir=photos,
        parts=_real_parts(args.parts),
        tasks=tuple(t for t in args.system_tasks.split(",") if t in REAL_TASKS),
        caption_batch=args.caption_batch,
        chunk_size=args.chunk_size,
        broker_url=args.broker_url,
        log_dir=log_dir,
        budget_s=args.budget_s or 540.0,
    )


def main() -> None:
    """Run the benchmark and write its own result file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("ovis-u1-shaped", "ovis-u1"), default="ovis-u1-shaped")
    parser.add_argument("--model-path", help="ovis-u1: the model directory (bench/build_ovis_u1_model.py)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, end to end")
    parser.add_argument(
        "--out", help="folder of the result file (default bench/results; --smoke: a new temp folder)"
    )
    parser.add_argument("--log-dir", help="folder of the worker logs (default: beside the result file)")
    parser.add_argument("--git-sha", help="the commit, recorded where the copy that runs has no .git")
    parser.add_argument(
        "--parts", help="shaped: check,official,fast,system (all); ovis-u1: system,model (both)"
    )
    parser.add_argument(
        "--budget-s", type=float, help="stop starting new sections after this (420; ovis-u1 540)"
    )
    parser.add_argument("--caption-items", type=int, help="captions in the system run (4096; ovis-u1 1024)")
    parser.add_argument(
        "--image-items", type=int, help="text-to-image items in the system run (24; ovis-u1 32)"
    )
    parser.add_argument("--edit-items", type=int, help="edits in the system run (4; ovis-u1 64)")
    parser.add_argument("--system-tasks", default=",".join(TASKS))
    parser.add_argument("--broker-url", default="", help="broker of the system run (default: embedded)")
    shaped = parser.add_argument_group("ovis-u1-shaped")
    shaped.add_argument("--caption-batches", default="64,128,256,512")
    shaped.add_argument("--gpus", default="none", help="worker GPUs: none (one worker) or 0,1 (one per GPU)")
    real = parser.add_argument_group("ovis-u1")
    real.add_argument("--model-caption-items", type=int, default=256, help="captions the model alone runs")
    real.add_argument(
        "--model-image-items", type=int, default=2, help="images and edits the model alone runs"
    )
    real.add_argument("--steps", type=int, default=50, help="sampling steps of images and edits")
    real.add_argument("--min-side", type=int, default=256, help="photos' shortest long side, px")
    real.add_argument("--max-side", type=int, default=1280, help="photos' longest long side, px")
    real.add_argument("--seed", type=int, default=0, help="inputs and sampling seed")
    real.add_argument("--photos", help="folder of the sample photos (realistic_inputs.py export-photos)")
    real.add_argument("--caption-batch", type=int, default=0, help="caption micro-batch (0: backend default)")
    real.add_argument("--chunk-size", type=int, default=0, help="items per chunk (0: product default)")
    args = parser.parse_args()

    if args.out:
        out = Path(args.out)
    elif args.smoke:
        out = Path(tempfile.mkdtemp(prefix="gpu-throughput-smoke-"))
    else:
        out = ROOT / "bench" / "results"
    log_dir = Path(args.log_dir) if args.log_dir else out
    log_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        **provenance(args.git_sha),
        "backend": args.backend,
        "smoke": args.smoke,
        "tasks": {task: {} for task in TASKS},
        "errors": {},
    }
    run_file = RunFile(out, results["date"], results["machine"]["gpu"])
    _log(f"this run's result file: {run_file.path}")
    run_file.write(results)
    if args.backend == "ovis-u1":
        from gpu_ovis_u1 import run_ovis_u1

        run_ovis_u1(real_plan(args, log_dir), results, run_file)
    else:
        run_shaped(args, results, run_file, log_dir)
    results["finished_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    run_file.write(results)
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
