"""Where a text-to-image item's GPU time goes, and what compile settings change it: the DiT of Ovis-U1's shape
(`ovis-u1-shaped` at full size, random weights, bf16) and its VAE decode, without the LLM.

For one setting per run: the milliseconds of one DiT pass (4096 image tokens + a prompt's text tokens), the
50-step, 2-pass sampling loop of one 1024 x 1024 image, the VAE decode, and the pass's CUDA time by kernel
family (matrix products, attention, fused elementwise kernels, the rest).

    python bench/dit_speed.py                                   # the worker's settings
    python bench/dit_speed.py --mode max-autotune-no-cudagraphs --static
    python bench/dit_speed.py --vae-compile

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gpu_model.fast_dit import (  # noqa: E402
    GraphedCall,
    compile_blocks,
    fuse_qkv,
    pick_sdpa_backend,
    sdpa_backend,
)
from gpu_model.shaped_models import FULL, ShapedDiT, build_vae  # noqa: E402
from gpu_model.shaped_sampling import Pass, euler, image_ids, schedule, unpack  # noqa: E402

SIDE = 1024
#: Text tokens of the conditional and the unconditional pass (the prompt template, 256 visual tokens and the
#: prompt's words; the unconditional prompt is shorter).
TEXT_TOKENS = (318, 281)


def family(name: str) -> str:
    """The kernel family of a CUDA kernel's name."""
    lowered = name.lower()
    if any(key in lowered for key in ("cudnn", "flash", "fmha", "attention", "sdpa")):
        return "attention"
    if any(key in lowered for key in ("gemm", "nvjet", "cutlass", "xmma", "matmul", "_mm_")):
        return "matmul"
    if lowered.startswith("triton"):
        return "fused_elementwise"
    return "other"


def kernel_families(fn: Any) -> dict[str, float]:
    """CUDA milliseconds of one call of `fn` by kernel family."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    totals: Counter[str] = Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[family(event.name)] += event.device_time / 1000
    return {name: round(ms, 3) for name, ms in totals.most_common()}


def timed_ms(fn: Any, repeats: int) -> float:
    """Median CUDA-event milliseconds of `fn`."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", default=None, help="torch.compile mode of the blocks")
    parser.add_argument("--static", action="store_true", help="compile for fixed shapes (dynamic=False)")
    parser.add_argument("--eager", action="store_true", help="no compilation")
    parser.add_argument("--coordinate-descent", action="store_true", help="Inductor's coordinate descent")
    parser.add_argument("--vae-compile", action="store_true", help="also compile the VAE decoder")
    parser.add_argument("--graphs", action="store_true", help="replay each pass from a CUDA graph")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    if args.coordinate_descent:
        import torch._inductor.config as inductor

        inductor.coordinate_descent_tuning = True
    cfg, device, dtype = FULL, torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    with device:
        dit = ShapedDiT(cfg).to(dtype).eval()
        vae = build_vae(cfg).to(dtype=dtype, memory_format=torch.channels_last)
    fuse_qkv(dit)
    head_dim = cfg.dit_hidden // cfg.dit_heads
    attention, timings = pick_sdpa_backend([(1, cfg.dit_heads, 4096 + TEXT_TOKENS[0], head_dim)])
    started = time.perf_counter()
    if not args.eager:
        compile_blocks(
            [*dit.flux.transformer_blocks, *dit.flux.single_transformer_blocks],
            mode=args.mode,
            dynamic=not args.static,
        )
    if args.vae_compile:
        vae.decoder.compile(mode=args.mode, dynamic=False)
    forward = GraphedCall(dit) if args.graphs else dit

    ids = image_ids(SIDE, SIDE, frame=0, device=device)
    passes = []
    for tokens in TEXT_TOKENS:
        text = torch.randn(1, tokens, cfg.dit_hidden, device=device, dtype=dtype)
        pooled = torch.randn(1, cfg.dit_hidden, device=device, dtype=dtype)
        passes.append(Pass(text, pooled, dit.rope(tokens, ids)))
    x = torch.randn(1, ids.shape[0], 4 * cfg.latent_channels, device=device, dtype=dtype)
    t = torch.full((1,), 0.5, device=device, dtype=dtype)

    def one_pass(p: Pass = passes[0]) -> torch.Tensor:
        out: torch.Tensor = forward(x, p.text, p.pooled, t, p.rope)
        return out

    def sample() -> torch.Tensor:
        return euler(
            x,
            passes,
            lambda v: v[1] + 5.0 * (v[0] - v[1]),
            schedule(args.steps, x.shape[1]),
            lambda image, p, t: forward(image, p.text, p.pooled, t, p.rope),
        )

    def decode() -> torch.Tensor:
        latents = unpack(x.float(), SIDE, SIDE) / vae.config.scaling_factor + vae.config.shift_factor
        sample: torch.Tensor = vae.decode(latents.to(dtype, memory_format=torch.channels_last)).sample
        return sample

    with torch.inference_mode(), sdpa_backend(attention):
        for fn in (one_pass, lambda: one_pass(passes[1]), decode):
            fn()  # compile, autotune
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - started
        pass_ms = timed_ms(one_pass, 20)
        families = kernel_families(one_pass)
        sample_ms = timed_ms(sample, 2)
        decode_ms = timed_ms(decode, 5)
    # FLOPs of one pass from the analytic counts the compute check uses.
    from gpu_model.shaped_compute import dit_pass_flops

    flops = dit_pass_flops(image_tokens=4096, text_tokens=TEXT_TOKENS[0])
    report = {
        "bench": "dit_speed",
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "settings": {
            "mode": args.mode,
            "dynamic": not args.static,
            "eager": args.eager,
            "coordinate_descent": args.coordinate_descent,
            "vae_compile": args.vae_compile,
            "graphs": args.graphs,
            "attention": attention,
        },
        "sdpa_timings_ms": timings,
        "compile_and_warmup_s": round(compile_s, 1),
        "pass_ms": round(pass_ms, 3),
        "pass_tflop_per_s": round(flops / pass_ms / 1e9, 1),
        "pass_kernel_ms": families,
        "sampling_s": round(sample_ms / 1000, 3),
        "vae_decode_ms": round(decode_ms, 2),
        "dit_plus_decode_s": round((sample_ms + decode_ms) / 1000, 3),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
