"""The ovis-u1 backend end to end on the GPU, over the Ovis-U1 stand-in (tiny, random weights).

Builds the stand-in model directory (its own remote code, like the real snapshot), loads it through
OvisU1Backend.load() (the same from_pretrained(..., trust_remote_code=True) path as the real weights),
then times caption at batch 1 and 4, text-to-image and edit. CUDA in bf16 when present, else the CPU.
Checks the plumbing on a GPU host (devices, dtypes, autocast, seeds), not the model's speed: the
stand-in is tiny. Prints one JSON object as its last line.

    python bench/ovis_u1_standin_gpu.py [--device auto|cuda|cpu] [--size 256] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> tuple[Any, float]:
    """The last result and the median wall time of `repeats` runs."""
    times, result = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return result, round(statistics.median(times), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=256, help="text-to-image side (multiple of 16)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    import transformers
    from PIL import Image

    from gpu_model.base import BackendOptions
    from gpu_model.ovis_u1 import OvisU1Backend
    from gpu_model.requests import CaptionRequest, EditRequest, GenerateRequest
    from tests.fixtures.ovis_u1_standin.build import build_standin, isolated_modules_cache

    work = Path(tempfile.mkdtemp(prefix="ovis-u1-standin-bench-"))
    start = time.perf_counter()
    model_dir = build_standin(work / "Ovis-U1-standin")
    build_s = time.perf_counter() - start

    backend = OvisU1Backend(BackendOptions(model_path=str(model_dir), device=args.device))
    with isolated_modules_cache(work / "hf_modules"):
        start = time.perf_counter()
        info = backend.load()
        load_s = time.perf_counter() - start
    cuda = info.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    start = time.perf_counter()
    backend.warmup()
    sync()
    warmup_s = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    colors = [(200, 30, 30), (30, 160, 40), (40, 60, 220), (220, 200, 40)]
    images = [Image.new("RGB", (320 + 32 * k, 240), color) for k, color in enumerate(colors)]
    captions = [
        CaptionRequest(image=im, prompt="What is it?", max_new_tokens=args.new_tokens) for im in images
    ]
    timings: dict[str, float] = {
        "build": round(build_s, 3),
        "load": round(load_s, 3),
        "warmup": round(warmup_s, 3),
    }
    caption1, timings["caption_batch1"] = _timed(lambda: backend.caption(captions[:1]), args.repeats, sync)
    caption4, timings["caption_batch4"] = _timed(lambda: backend.caption(captions), args.repeats, sync)
    side = args.size
    gen = GenerateRequest(prompt="a red cat", width=side, height=side, steps=args.steps, seed=42, txt_cfg=5.0)
    generated, timings["generate"] = _timed(lambda: backend.generate([gen]), args.repeats, sync)
    source = Image.new("RGB", (384, 256), (90, 140, 200))
    edit = EditRequest(
        image=source, instruction="make it red", steps=args.steps, seed=7, img_cfg=1.5, txt_cfg=6.0
    )
    edited, timings["edit"] = _timed(lambda: backend.edit([edit]), args.repeats, sync)
    again = backend.generate([gen])[0]

    model = backend.model
    result = {
        "bench": "ovis_u1_standin_gpu",
        "device": info.device,
        "device_name": torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine()),
        "dtype": str(next(model.llm.parameters()).dtype).removeprefix("torch."),
        "vae_dtype": str(next(model.visual_generator.vae.parameters()).dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ran": ["load", "warmup", "caption_batch1", "caption_batch4", "generate", "edit"],
        "params": {"size": side, "steps": args.steps, "new_tokens": args.new_tokens, "repeats": args.repeats},
        "timings_s": timings,
        "checks": {
            "caption_batch4_first_equals_batch1": caption4[0] == caption1[0],
            "generate_size": list(generated[0].size),
            "generate_mode": generated[0].mode,
            "generate_reproducible": again.tobytes() == generated[0].tobytes(),
            "edit_size": list(edited[0].size),
        },
        "peak_gpu_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    }
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
