"""The GPU benchmark on the real Ovis-U1 code path: the `ovis-u1` backend over a model directory.

The directory is one bench/build_ovis_u1_model.py wrote (the official remote code, random weights: the real
compute, meaningless outputs) or the real weights. Inputs are bench/realistic_inputs.py's: JPEG photos of
256-1280 px, caption limits of 40-400 tokens (random weights never stop early), prompts of many lengths,
edits of mixed sizes. Sections, in the order --parts names them (system, then model by default):

- `system`: a fresh `ovis-batch worker` process with an empty compile cache folder (its setting
  `compile_cache`, which holds the Inductor, Triton, CUDA and remote-module caches) and the page cache
  dropped where the run may. A one-photo caption job is queued before the worker starts; `cold_start_s` is
  the time from starting the process to that job's result. That worker stops and a second fresh one starts
  the same way over the folder the first filled (what a docker volume gives a new container), page cache
  dropped again: `cold_start_cached_s`. Then one job per task through the second worker, each timed from
  submission until it ends: `tasks.<task>.system_items_per_s`.
- `model`: the backend in this process, inputs decoded and prepared beforehand (as the worker's I/O threads
  do), warmed up at the first micro-batch's shapes: `tasks.<task>.model_items_per_s`. Captions run in the
  backend's micro-batches (split in two on out-of-memory, as the worker does); images one at a time, then
  one more of each kind with the time of its parts (conditions, DiT passes, VAE, the rest):
  `tasks.<task>.breakdown` (bench/image_breakdown.py).

Text-to-image items have the backend's default size (1024 x 1024) and 50 steps; edits keep their input's
aspect ratio at about 1 MP at most, 50 steps.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from gpu_results import RunFile, run_section
from gpu_system import log, run_job, start_worker, stop_worker, wait_for, wait_ready, worker_env
from realistic_inputs import Inputs, read_manifest, write_inputs

TASKS = ("caption", "generate", "edit")
#: Budget a section needs left to start: the model alone loads and warms up a model before its first item.
SECTION_MIN_S = {"system": 60.0, "model": 120.0}
#: Guidance of the official scripts.
TXT_CFG_GENERATE, IMG_CFG_EDIT, TXT_CFG_EDIT = 5.0, 1.5, 6.0


@dataclass
class RealPlan:
    """What one run of the real model does."""

    model_path: Path
    device: str
    smoke: bool
    #: Items of each system job.
    captions: int
    prompts: int
    edits: int
    #: Items the model alone runs: captions, and text-to-image and edit items each.
    model_captions: int
    model_images: int
    steps: int
    #: Text-to-image size (width, height); None: the backend's default.
    image_size: tuple[int, int] | None
    long_side: tuple[int, int]
    seed: int
    photos_dir: Path | None
    parts: tuple[str, ...]
    tasks: tuple[str, ...]
    #: The worker's caption micro-batch and chunk size; 0: the product's defaults.
    caption_batch: int
    chunk_size: int
    broker_url: str
    log_dir: Path
    budget_s: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.budget_s - (time.monotonic() - self.started)

    def describe(self) -> dict[str, Any]:
        """The plan as the result file records it."""
        return {
            "model_path": str(self.model_path),
            "system_items": {"caption": self.captions, "generate": self.prompts, "edit": self.edits},
            "model_items": {
                "caption": self.model_captions,
                "generate": self.model_images,
                "edit": self.model_images,
            },
            "steps": self.steps,
            "image_size": list(self.image_size) if self.image_size else "backend default (1024 x 1024)",
            "photo_long_side_px": list(self.long_side),
            "seed": self.seed,
            "caption_batch": self.caption_batch or "backend default",
            "chunk_size": self.chunk_size or "product default",
            "broker": self.broker_url.split("://")[0] if self.broker_url else "filesystem (embedded)",
            "budget_s": self.budget_s,
        }


def smoke_plan(
    model_path: Path, log_dir: Path, budget_s: float, photos_dir: Path | None, parts: tuple[str, ...]
) -> RealPlan:
    """Every section at toy sizes on the CPU (a model built with --tiny)."""
    return RealPlan(
        model_path=model_path,
        device="cpu",
        smoke=True,
        captions=6,
        prompts=2,
        edits=2,
        model_captions=4,
        model_images=1,
        steps=2,
        image_size=(128, 96),
        long_side=(96, 320),
        seed=0,
        photos_dir=photos_dir,
        parts=parts,
        tasks=TASKS,
        caption_batch=0,
        chunk_size=0,
        broker_url="",
        log_dir=log_dir,
        budget_s=budget_s,
    )


def _timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    """Result and wall seconds, the device drained before and after."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start


def _peak_gb(device: str, reset: bool = False) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return round(torch.cuda.max_memory_allocated() / 1e9, 2)


def model_directory(model_path: Path) -> dict[str, Any]:
    """What the model directory says about itself (its build record, when bench/ built it)."""
    record = model_path / "ovis_batch_build.json"
    built = json.loads(record.read_text()) if record.is_file() else None
    index = model_path / "model.safetensors.index.json"
    size = json.loads(index.read_text()).get("metadata", {}).get("total_size") if index.is_file() else None
    return {
        "path": str(model_path),
        "weights": "random (bench/build_ovis_u1_model.py)" if built else "as found (not built here)",
        "build": built,
        "weights_gb": round(size / 1e9, 2) if size else None,
    }


def drop_page_cache() -> str:
    """Drop the kernel's page cache (root only), so that the model files are read from disk."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        return f"not dropped ({exc.strerror or exc})"
    return "dropped"


def _head(manifest: Path, count: int, dest: Path) -> Path:
    """The first `count` records of a JSONL manifest, as a manifest of their own."""
    lines = [line for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()][:count]
    dest.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return dest


# -- the system ---------------------------------------------------------------------------------------------
def _cache_contents(folder: Path) -> dict[str, dict[str, float]]:
    """Files and megabytes in each cache of a compile cache folder."""
    contents = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [f for f in sub.rglob("*") if f.is_file()]
        contents[sub.name] = {"files": len(files), "mb": round(sum(f.stat().st_size for f in files) / 1e6, 1)}
    return contents


def _cold_start(
    plan: RealPlan, client: Any, env: dict[str, str], probe: Path, log_path: Path, cwd: Path
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """A one-photo caption job queued, the page cache dropped, then a new worker process: the seconds from
    its start to that job's result. Returns the worker, ready, and what the result file records."""
    from jobs.lifecycle import JobKind

    probe_id = client.submit(JobKind.CAPTION, str(probe))
    page_cache = drop_page_cache() if plan.device.startswith("cuda") else "kept (CPU run)"
    started = time.monotonic()
    worker = start_worker(env, log_path, cwd)
    try:
        wait_for(
            lambda: client.status(probe_id).done >= 1,
            worker,
            log_path,
            max(60.0, plan.left() - 30),
            "no result",
        )
        seconds = time.monotonic() - started
        wait_ready(worker, log_path, 1, 60)
    except BaseException:
        stop_worker(worker)
        raise
    return worker, {
        "first_result_s": round(seconds, 2),
        "page_cache": page_cache,
        "probe": client.status(probe_id).as_dict(),
        "worker_log": log_path.name,
    }


def system_run(plan: RealPlan, inputs: Inputs, results: dict[str, Any], run_file: RunFile) -> None:
    """Two cold workers' first results (empty compile cache, then the one the first filled), then one job
    per task through the second."""
    from gpu_model.compile_cache import CACHE_FOLDERS, HF_MODULES_PARENTS, point_caches
    from jobs.api import Client
    from jobs.lifecycle import JobKind
    from jobs.settings import Settings

    work = inputs.folder.parent
    cache = work / "compile-cache"
    values = {
        "home": str(work / "home"),
        "backend": "ovis-u1",
        "model_path": str(plan.model_path),
        "device": plan.device,
        "io_threads": "16",
        "input_roots": str(inputs.folder),
        "storage_url": str(work / "outputs"),
        "queue": f"bench{os.getpid()}",
        "reconcile_interval_s": "0",
        "compile_cache": str(cache),
    }
    if plan.caption_batch:
        values["caption_batch"] = str(plan.caption_batch)
    if plan.chunk_size:
        values["chunk_size"] = str(plan.chunk_size)
    if plan.broker_url:
        values["broker_url"] = plan.broker_url
    env = worker_env(values, {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    # The worker's caches are the folder's alone: neither this process's caches nor the host's leak in.
    for name in (*CACHE_FOLDERS, *HF_MODULES_PARENTS):
        env.pop(name, None)
    # Where the worker puts each cache, worked out as it does (its log says the same).
    caches = point_caches(cache, dict(env)).as_record()
    client = Client(Settings(**{k: v for k, v in values.items() if k != "caption_batch"}))
    probe = _head(inputs.caption_manifest, 1, inputs.folder / "probe.jsonl")
    stem = run_file.path.stem
    worker, first = _cold_start(plan, client, env, probe, plan.log_dir / f"{stem}-worker.log", work)
    try:
        results["cold_start_s"] = first["first_result_s"]
        results["cold_start"] = {
            "what": "a new worker process with an empty compile cache folder, from its start to the result "
            "of a one-photo caption job queued before it started",
            **first,
            "compile_cache": caches,
        }
        log(f"cold start: first result {first['first_result_s']:.1f}s after the worker started")
        run_file.write(results)
        stop_worker(worker)
        filled = _cache_contents(cache)
        worker, second = _cold_start(
            plan, client, env, probe, plan.log_dir / f"{stem}-worker-cached.log", work
        )
        results["cold_start_cached_s"] = second["first_result_s"]
        results["cold_start_cached"] = {
            "what": "a second new worker process over the compile cache folder the first one filled, as a "
            "docker volume gives a new container, from its start to the result of the same job",
            **second,
            "compile_cache": caches,
            "cache_contents_at_start": filled,
        }
        log(f"cold start over the filled compile cache: {second['first_result_s']:.1f}s ({filled})")
        run_file.write(results)
        sources = {
            "caption": _head(inputs.caption_manifest, plan.captions, inputs.folder / "captions-system.jsonl"),
            "generate": _head(inputs.generate_manifest, plan.prompts, inputs.folder / "prompts-system.jsonl"),
            "edit": _head(inputs.edit_manifest, plan.edits, inputs.folder / "edits-system.jsonl"),
        }
        params: dict[str, dict[str, Any]] = {
            "caption": {},
            "generate": {"steps": plan.steps},
            "edit": {"steps": plan.steps},
        }
        for task in plan.tasks:
            entry = results["tasks"][task]
            if plan.left() < 30:
                entry["system"] = {"skipped": "budget"}
                log(f"budget: system {task} skipped")
                continue
            if task != "caption":
                # The generator compiles at the first item of a size: one one-step item first, untimed in
                # the job's rate, its own time recorded.
                first_use = _head(sources[task], 1, inputs.folder / f"{task}-first-use.jsonl")
                report = run_job(client, JobKind(task), str(first_use), {"steps": 1}, plan.left() - 10)
                entry["system_first_use"] = report
                log(f"system {task}, first use (one item, one step): {report}")
            report = run_job(client, JobKind(task), str(sources[task]), params[task], plan.left() - 10)
            entry["system"] = report
            entry["system_items_per_s"] = report.get("items_per_s")
            log(f"system {task}: {report}")
            run_file.write(results)
    finally:
        stop_worker(worker)


# -- the model alone ---------------------------------------------------------------------------------------
def _load_images(paths: list[Path]) -> list[Any]:
    from PIL import Image

    def load(path: Path) -> Any:
        with Image.open(path) as image:
            return image.convert("RGB")

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(load, paths))


def _caption_batches(backend: Any, batches: list[list[Any]], device: str) -> tuple[list[float], int]:
    """Seconds of each micro-batch, halving a batch that runs out of memory (as the worker does)."""
    from gpu_model.errors import BackendOutOfMemory

    splits = 0

    def run(batch: list[Any]) -> None:
        nonlocal splits
        try:
            backend.caption(batch)
        except BackendOutOfMemory:
            if len(batch) == 1:
                raise
            splits += 1
            run(batch[: len(batch) // 2])
            run(batch[len(batch) // 2 :])

    seconds = [_timed(partial(run, batch), device)[1] for batch in batches]
    return seconds, splits


def model_run(plan: RealPlan, inputs: Inputs, results: dict[str, Any], run_file: RunFile) -> None:
    """The backend in this process: load, warm up, then each task's items."""
    from image_breakdown import image_breakdown

    from gpu_model.base import BackendOptions
    from gpu_model.ovis_u1 import DEFAULT_CAPTION_PROMPT, MIN_CAPTION_MAX_PIXELS, OvisU1Backend
    from gpu_model.requests import CaptionRequest, EditRequest, GenerateRequest

    max_batch = {"caption": plan.caption_batch} if plan.caption_batch else {}
    backend = OvisU1Backend(
        BackendOptions(model_path=str(plan.model_path), device=plan.device, max_batch=max_batch)
    )
    info, load_s = _timed(backend.load, plan.device)
    _, warm_s = _timed(backend.warmup, plan.device)
    results["model_alone"] = {
        "load_s": round(load_s, 2),
        "warmup_s": round(warm_s, 2),
        "max_batch": info.max_batch,
    }
    log(f"model alone: loaded in {load_s:.1f}s, warmed up in {warm_s:.1f}s; micro-batches {info.max_batch}")
    run_file.write(results)
    device = info.device

    if "caption" in plan.tasks and plan.left() > 30:
        records = read_manifest(inputs.caption_manifest)[: plan.model_captions]
        images = _load_images([inputs.folder / r["image"] for r in records])
        requests = [
            CaptionRequest(image, DEFAULT_CAPTION_PROMPT, r["max_new_tokens"])
            for image, r in zip(images, records, strict=True)
        ]
        with ThreadPoolExecutor(16) as pool:
            prepared = list(pool.map(backend.prepare, requests))
        size = info.max_batch["caption"]
        batches = [prepared[k : k + size] for k in range(0, len(prepared), size)]
        first_s = _caption_batches(backend, batches[:1], device)[0][0]
        _peak_gb(device, reset=True)
        seconds, splits = _caption_batches(backend, batches, device)
        tokens = sum(r.max_new_tokens for r in requests)
        results["tasks"]["caption"].update(
            model_items_per_s=round(len(requests) / sum(seconds), 3),
            model={
                "items": len(requests),
                "micro_batch": size,
                "batch_s": [round(s, 2) for s in seconds],
                "first_batch_untimed_s": round(first_s, 2),
                "out_of_memory_splits": splits,
                "new_tokens": tokens,
                "new_tokens_per_s": round(tokens / sum(seconds), 1),
                "peak_gpu_mem_gb": _peak_gb(device),
            },
        )
        pipeline = backend._pipeline
        decoder = getattr(pipeline, "decoder", None)
        results["tasks"]["caption"]["model"]["decoder_compactions"] = getattr(decoder, "compactions", None)
        # Both timed passes (the first batch's too): the image encoding and merge against the decoder.
        results["tasks"]["caption"]["model"]["calls"] = pipeline.caption_stats.as_dict() if pipeline else None
        log(f"model caption: {results['tasks']['caption']['model']}")
        run_file.write(results)
        if plan.left() > 60:
            from image_breakdown import caption_breakdown

            first = batches[0]
            breakdown = caption_breakdown(backend, lambda: backend.caption(first), device)
            results["tasks"]["caption"]["breakdown"] = {"items": len(first), **breakdown}
            log(f"model caption breakdown: {results['tasks']['caption']['breakdown']}")
            run_file.write(results)
        if plan.left() > 60:
            # The same photos with the model's own resize capped at 448x448 pixels (--max-pixels).
            capped = [replace(r, max_pixels=MIN_CAPTION_MAX_PIXELS, prepared=None) for r in requests]
            with ThreadPoolExecutor(16) as pool:
                capped = list(pool.map(backend.prepare, capped))
            if pipeline is not None:
                pipeline.caption_stats = type(pipeline.caption_stats)()
            seconds, splits = _caption_batches(
                backend, [capped[k : k + size] for k in range(0, len(capped), size)], device
            )
            caption = results["tasks"]["caption"]
            caption["model_items_per_s_max_pixels_448"] = round(len(capped) / sum(seconds), 3)
            caption["model_max_pixels_448"] = {
                "max_pixels": MIN_CAPTION_MAX_PIXELS,
                "batch_s": [round(s, 2) for s in seconds],
                "out_of_memory_splits": splits,
                "calls": pipeline.caption_stats.as_dict() if pipeline else None,
            }
            log(f"model caption at 448x448: {len(capped) / sum(seconds):.1f}/s")
            run_file.write(results)

    size = {"width": plan.image_size[0], "height": plan.image_size[1]} if plan.image_size else {}
    defaults = info.defaults["generate"]
    makers: dict[str, Callable[[dict[str, Any], int], Any]] = {
        "generate": lambda r, k: GenerateRequest(
            r["prompt"],
            r.get("width", size.get("width", defaults["width"])),
            r.get("height", size.get("height", defaults["height"])),
            plan.steps,
            seed=plan.seed + k,
            txt_cfg=TXT_CFG_GENERATE,
        ),
        "edit": lambda r, k: EditRequest(
            _load_images([inputs.folder / r["image"]])[0],
            r["instruction"],
            plan.steps,
            seed=plan.seed + k,
            img_cfg=IMG_CFG_EDIT,
            txt_cfg=TXT_CFG_EDIT,
        ),
    }
    manifests = {"generate": inputs.generate_manifest, "edit": inputs.edit_manifest}
    for task in ("generate", "edit"):
        if task not in plan.tasks or plan.left() < 30:
            continue
        records = read_manifest(manifests[task])[: plan.model_images]
        requests = [makers[task](r, k) for k, r in enumerate(records)]
        method = backend.generate if task == "generate" else backend.edit
        _, first_s = _timed(partial(method, [replace(requests[0], steps=1)]), device)
        _peak_gb(device, reset=True)
        seconds = [_timed(partial(method, [r]), device)[1] for r in requests]
        results["tasks"][task].update(
            model_items_per_s=round(len(requests) / sum(seconds), 4),
            model_s_per_item=round(sum(seconds) / len(requests), 3),
            model={
                "items": len(requests),
                "item_s": [round(s, 2) for s in seconds],
                "mean_s": round(statistics.fmean(seconds), 3),
                "first_one_step_untimed_s": round(first_s, 2),
                "peak_gpu_mem_gb": _peak_gb(device),
            },
        )
        log(f"model {task}: {results['tasks'][task]['model']}")
        if plan.left() > 30:
            # One more item, one the timed ones did not have, with the time of each of its parts.
            records = read_manifest(manifests[task])
            probe = makers[task](records[len(requests) % len(records)], len(requests))
            breakdown = image_breakdown(backend, partial(method, [probe]), device)
            results["tasks"][task]["breakdown"] = breakdown
            log(f"model {task} breakdown: {breakdown}")
        run_file.write(results)


def _freeing(section: Callable[[], None]) -> None:
    """Run a section that holds a model, then give its memory back."""
    import torch

    try:
        section()
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# -- the run -----------------------------------------------------------------------------------------------
def run_ovis_u1(plan: RealPlan, results: dict[str, Any], run_file: RunFile) -> None:
    """Inputs, then the sections of the plan; each section's failure is recorded, the others still run."""
    from build_ovis_u1_model import ensure_flash_attn

    work = Path(tempfile.mkdtemp(prefix="ovis-u1-bench-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["HF_MODULES_CACHE"] = str(work / "bench-hf-modules")
    # Caches of this process's own: the worker's start empty whichever section runs first.
    for name, folder in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        os.environ[name] = str(work / "bench-caches" / folder)
    results["plan"] = plan.describe()
    results["model"] = {**model_directory(plan.model_path), "flash_attn": ensure_flash_attn()}
    inputs, seconds = _timed(
        lambda: write_inputs(
            work / "inputs",
            captions=max(plan.captions, plan.model_captions, 1),
            prompt_count=max(plan.prompts, plan.model_images),
            edits=max(plan.edits, plan.model_images),
            seed=plan.seed,
            photos_dir=plan.photos_dir,
            long_side=plan.long_side,
            image_size=plan.image_size,
        ),
        "cpu",
    )
    results["inputs"] = {**inputs.summary(), "written_s": round(seconds, 1)}
    log(f"wrote the inputs in {seconds:.1f}s: {json.dumps(inputs.summary())}")
    run_file.write(results)
    sections: dict[str, Callable[[], None]] = {
        "system": lambda: system_run(plan, inputs, results, run_file),
        "model": lambda: _freeing(lambda: model_run(plan, inputs, results, run_file)),
    }
    for name in plan.parts:
        section = sections[name]
        if plan.left() < SECTION_MIN_S[name]:
            results["errors"][name] = f"skipped: {plan.left():.0f}s of the budget left"
            continue
        run_section(name, section, results, plan.left())
        run_file.write(results)
    for task in TASKS:
        entry = results["tasks"][task]
        system_rate, model_rate = entry.get("system_items_per_s"), entry.get("model_items_per_s")
        if system_rate and model_rate:
            entry["system_over_model"] = round(system_rate / model_rate, 3)
    run_file.write(results)
    print(f"result file: {run_file.path}", file=sys.stderr)
