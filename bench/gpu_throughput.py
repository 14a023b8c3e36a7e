"""GPU throughput of Ovis-U1-sized work: the model alone (official way at batch 1, fast paths at the best
batch) and the whole system (a real `ovis-batch worker` process, the folder broker, SQLite, local storage).

Tasks: captioning (448 px images, 128 new tokens), text-to-image (1024 x 1024, 50 steps), editing (1024 x 1024
inputs, 50 steps, ~1 MP out). The model is the `ovis-u1-shaped` backend: Ovis-U1-3B's architecture at full
size with random weights; its size and FLOPs are checked against the real model's first (printed).

    python bench/gpu_throughput.py                 # on a GPU host; writes bench/results/gpu-<date>.json
    python bench/gpu_throughput.py --smoke         # the whole run at tiny sizes on the CPU (< 1 min)

Prints one JSON object as its last line (the file's content).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.budget_s - (time.monotonic() - self.started)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- environment and compute check -------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """GPU, driver and library versions."""
    import diffusers
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
    else:
        info["gpu"] = None
    return info


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
    from gpu_model.shaped import CAPTION_PROMPT

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
    results["caption"].update(batch1_items_per_s=round(1 / seconds, 4), batch1_s_per_item=round(seconds, 3))
    _log(f"official caption, batch 1: {seconds:.2f}s")
    for task, make in (("generate", _generate_request), ("edit", _edit_request)):
        method = backend.generate if task == "generate" else backend.edit
        first = make(plan, 0)
        method([replace(first, steps=1)])  # warm-up: kernels, allocator
        images, seconds = timed(lambda method=method, first=first: method([first]))
        keep[f"official_{task}_image"] = images[0]
        results[task].update(batch1_items_per_s=round(1 / seconds, 4), batch1_s_per_item=round(seconds, 3))
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
    caption = results["caption"]
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
        tokens, seconds = timed(lambda batch=batch: backend.caption_tokens(batch))
        _, caption_s = timed(lambda batch=batch: backend.caption(batch))
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
        backend._decoder._slots.clear()
        _free(None, compiled=False)
    for task, make in (("generate", _generate_request), ("edit", _edit_request)):
        method = backend.generate if task == "generate" else backend.edit
        _reset_peak()
        items = [make(plan, k) for k in range(plan.model_images if task == "generate" else 2)]
        images, seconds = timed(lambda method=method, items=items: method(items))
        results[task].update(
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
        compared = results[task].setdefault("batch_vs_batch1", {})  # a merged run's figures stay
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

    from gpu_model.fast_decode import _decode_attention_enabled

    decoder = backend._decoder
    slot = next(iter(decoder._slots.values()))
    with torch.inference_mode(), _decode_attention_enabled(decoder.model, slot.variant or "sdpa"):
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

    from gpu_model.shaped import CAPTION_PROMPT

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
    from gpu_model.shaped import GENERATE_PREFIX
    from gpu_model.shaped_compute import dit_pass_flops
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
                _, seconds = timed(
                    lambda image=image, p=p: [backend._velocity(image, p, t) for _ in range(5)]
                )
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
    caption_batch = int(results["caption"].get("best_batch") or max(plan.caption_batches))
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
    }
    if plan.broker_url:
        values["broker_url"] = plan.broker_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVIS_BATCH_")}
    env.update({f"OVIS_BATCH_{k.upper()}": v for k, v in values.items()})
    env.update(
        PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    )
    workers = 1 if plan.gpus == "none" else len(plan.gpus.split(","))
    log_path = out / ("gpu-worker-smoke.log" if plan.smoke else f"gpu-worker{'s' * (workers > 1)}.log")
    started = time.monotonic()
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker", "--gpus", plan.gpus, "--loglevel", "INFO"],
            cwd=work,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(worker, log_path, workers, timeout=max(60.0, plan.left() - 30))
        ready_s = time.monotonic() - started
        _log(f"worker ready after {ready_s:.1f}s (load + warm-up)")
        results["system_worker" if workers == 1 else f"system_{workers}_workers"] = {
            "ready_s": round(ready_s, 1),
            "caption_batch": caption_batch,
            "chunk_size": plan.chunk_size,
            "workers": workers,
            "gpus": plan.gpus,
            "broker": plan.broker_url.split("://")[0] if plan.broker_url else "filesystem (embedded)",
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
                results[task].setdefault("system", {"skipped": "device budget"})
                continue
            report = _run_job(client, JobKind(task), str(sources[task]), params[task], plan)
            suffix = "" if workers == 1 else f"_{workers}_workers"
            results[task][f"system{suffix}"] = report
            results[task][f"system_items_per_s{suffix}"] = report.get("items_per_s")
            _log(f"system {task}: {report}")
    finally:
        _stop(worker)


def _wait_ready(worker: subprocess.Popen[bytes], log_path: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while log_path.read_text(errors="replace").count(" ready.") < count:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready after {timeout:.0f}s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


class GpuSampler:
    """`nvidia-smi` every 200 ms while a job runs: mean utilisation and peak memory of the whole GPU."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._process: subprocess.Popen[str] | None = None
        self._thread: Any = None

    def __enter__(self) -> GpuSampler:
        import shutil
        import threading

        if shutil.which("nvidia-smi") is None:
            return self
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        self._process = subprocess.Popen([*query, "-lms", "200"], stdout=subprocess.PIPE, text=True)

        def read() -> None:
            assert self._process is not None and self._process.stdout is not None
            for line in self._process.stdout:
                try:
                    util, memory = (float(v) for v in line.split(",")[:2])
                except ValueError:
                    continue
                self.samples.append((util, memory))

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)

    def summary(self) -> dict[str, Any]:
        """Mean GPU utilisation (%) and peak memory used (GB) over the samples."""
        if not self.samples:
            return {}
        return {
            "gpu_util_mean_pct": round(statistics.mean(u for u, _ in self.samples), 1),
            "gpu_mem_used_peak_gb": round(max(m for _, m in self.samples) / 1024, 1),
            "samples": len(self.samples),
        }


def _run_job(client: Any, kind: Any, source: str, params: dict[str, Any], plan: Plan) -> dict[str, Any]:
    with GpuSampler() as sampler:
        report = _submit_and_wait(client, kind, source, params, plan)
    report.update(sampler.summary())
    return report


def _submit_and_wait(
    client: Any, kind: Any, source: str, params: dict[str, Any], plan: Plan
) -> dict[str, Any]:
    start = time.perf_counter()
    job_id = client.submit(kind, source, params=params)
    submitted = time.perf_counter()
    deadline = time.monotonic() + max(30.0, plan.left() - 10)
    while True:
        report = client.status(job_id)
        if report.status not in ("queued", "running"):
            break
        if time.monotonic() > deadline:
            return {"job_id": job_id, "error": "timed out", "done": report.done, "total": report.total}
        time.sleep(0.05)
    wall = time.perf_counter() - start
    run = (
        (report.finished_at - report.started_at).total_seconds()
        if report.started_at and report.finished_at
        else None
    )
    return {
        "job_id": job_id,
        "status": report.status,
        "items": report.total,
        "succeeded": report.succeeded,
        "failed": report.failed,
        "errors": client.errors_by_code(job_id) if report.failed else {},
        "submit_s": round(submitted - start, 3),
        "wall_s": round(wall, 2),
        "started_to_finished_s": round(run, 2) if run is not None else None,
        # Submitted to first claim (the folder broker polls its queue once a second), plus the status poll.
        "wait_before_start_s": round(wall - run - (submitted - start), 2) if run is not None else None,
        "items_per_s": round(report.succeeded / wall, 4),
        "s_per_item": round(wall / max(1, report.succeeded), 3),
    }


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)


# -- verdicts and output -------------------------------------------------------------------------------------
def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, met or not (None where a figure is missing)."""

    def ratio(task: str) -> float | None:
        system_rate, model_rate = (
            results[task].get("system_items_per_s"),
            results[task].get("model_items_per_s"),
        )
        return round(system_rate / model_rate, 3) if system_rate and model_rate else None

    def at_most(task: str, seconds: float) -> bool | None:
        rate = results[task].get("system_items_per_s")
        return (1 / rate <= seconds) if rate else None

    caption = results["caption"]
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


def main() -> None:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, end to end")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for the JSON and logs")
    parser.add_argument("--parts", default="check,official,fast,system")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new sections after this")
    parser.add_argument("--caption-batches", default="64,128,256,512")
    parser.add_argument("--caption-items", type=int, default=4096, help="captions in the system run")
    parser.add_argument("--image-items", type=int, default=24, help="text-to-image items in the system run")
    parser.add_argument("--edit-items", type=int, default=4, help="edits in the system run")
    parser.add_argument("--merge", help="a previous result JSON whose sections this run does not redo")
    parser.add_argument("--gpus", default="none", help="worker GPUs: none (one worker) or 0,1 (one per GPU)")
    parser.add_argument("--system-tasks", default=",".join(TASKS))
    parser.add_argument("--broker-url", default="", help="broker of the system run (default: embedded)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    if args.smoke:
        plan = Plan(
            True,
            "cpu",
            8,
            64,
            56,
            2,
            [2, 4],
            2,
            2,
            {"caption": 8, "generate": 2, "edit": 2},
            4,
            args.budget_s,
        )
    else:
        batches = [int(b) for b in args.caption_batches.split(",")]
        items = {"caption": args.caption_items, "generate": args.image_items, "edit": args.edit_items}
        plan = Plan(False, "cuda", 128, 1024, 448, 50, batches, 8, 3, items, 2048, args.budget_s, args.gpus)
    plan.system_tasks = tuple(args.system_tasks.split(","))
    plan.broker_url = args.broker_url
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = json.loads(Path(args.merge).read_text()) if args.merge else {}
    for task in TASKS:
        results.setdefault(task, {})
    results.update(
        bench="gpu_throughput",
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        smoke=plan.smoke,
        plan={
            "new_tokens": plan.new_tokens,
            "caption_side": plan.caption_side,
            "image_side": plan.image_side,
            "steps": plan.steps,
            "caption_batches": plan.caption_batches,
            "system_items": plan.system_items,
        },
    )
    results["environment" if plan.gpus == "none" else "environment_multi_gpu"] = environment()
    name = "gpu-smoke.json" if plan.smoke else f"gpu-{results['date']}.json"
    sections: list[tuple[str, Callable[[], None]]] = [
        ("check", lambda: results.__setitem__("compute_check", compute_check())),
        ("official", lambda: model_official(plan, results, keep)),
        ("fast", lambda: model_fast(plan, results, keep)),
        ("system", lambda: system(plan, results, out)),
    ]
    keep: dict[str, Any] = {}
    errors = results.setdefault("errors", {})
    for section, run in sections:
        if section not in parts:
            continue
        if plan.left() < 30:
            errors[section] = "skipped: device budget"
            continue
        _log(f"== {section} ({plan.left():.0f}s of budget left)")
        try:
            run()
            errors.pop(section, None)
        except Exception as exc:  # one failing section must not lose the others' figures
            import traceback

            traceback.print_exc()
            errors[section] = f"{type(exc).__name__}: {exc}"[:2000]
        results["targets"] = verdicts(results)
        (out / name).write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
