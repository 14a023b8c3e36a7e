"""The raw result file of one GPU benchmark run, and what it says about where and how it ran.

Every run writes its own file, `gpu_throughput-<UTC time>-<gpu>.json`, never another run's: the name is taken
with an exclusive create (a second run in the same second gets a `-2` suffix). Unlike bench/raw_result.py's
files, written once at the end, this one is rewritten by its own run as its sections end (a temporary file,
then a rename): a GPU run that is stopped at its time limit keeps what it measured. What it records about
the run is raw_result's (date, git commit and whether the tree was clean, machine, library versions, command
line), with the GPU (name, count, memory, driver) and the model stack's versions added.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.raw_result import run_metadata

BENCH = "gpu_throughput"
#: Versions recorded beside raw_result's: the model stack the real code path runs on.
MODEL_STACK = ("tokenizers", "huggingface_hub", "accelerate", "safetensors", "einops", "numpy", "pillow")


def slug(text: str) -> str:
    """Lower-case letters, digits and single dashes: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def gpu_details() -> dict[str, Any]:
    """The GPU this process sees (None without CUDA), how many, their memory, the driver, CUDA and cuDNN."""
    import torch

    info: dict[str, Any] = {"gpu": None, "torch_cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        return info
    info.update(
        gpu=torch.cuda.get_device_name(),
        gpu_count=torch.cuda.device_count(),
        gpu_memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1),
        cudnn=torch.backends.cudnn.version(),
    )
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
    return info


def provenance(given_sha: str | None) -> dict[str, Any]:
    """raw_result's record of the run, the GPU in `machine`, the model stack in `versions`, and the commit
    `--git-sha` gave when given: a copy of the working tree on a GPU host may carry no .git or a stale one, so
    the caller's word wins (what the local .git said is kept beside it)."""
    meta = run_metadata(gpu_details())
    for name in MODEL_STACK:
        try:
            meta["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if given_sha:
        local = {"git_sha": meta["git_sha"], "git_dirty": meta["git_dirty"]}
        meta["git_sha"], meta["git_sha_from"] = given_sha, "--git-sha"
        if local["git_sha"] is not None and not str(local["git_sha"]).startswith(given_sha):
            meta["git_dirty"] = None  # against a .git the run did not come from: unknown
            meta["local_git"] = local
    return {"bench": BENCH, **meta}


class RunFile:
    """This run's result file: its name claimed once, its content replaced as the run goes on."""

    def __init__(self, folder: Path, date: str, gpu: str | None) -> None:
        """`date` as raw_result writes it (2026-12-07T21:05:09Z)."""
        folder.mkdir(parents=True, exist_ok=True)
        base = f"{BENCH}-{date.replace(':', '').replace('-', '')}-{slug(gpu or 'cpu')}"
        for attempt in range(1, 1000):
            path = folder / (f"{base}.json" if attempt == 1 else f"{base}-{attempt}.json")
            try:
                with open(path, "x", encoding="utf-8") as claimed:
                    claimed.write("{}\n")
            except FileExistsError:
                continue
            self.path = path
            return
        raise RuntimeError(f"no free result file name for {base} in {folder}")

    def write(self, results: dict[str, Any]) -> None:
        """Replace the file's content with `results` (never another run's file)."""
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
        os.replace(partial, self.path)


def run_section(name: str, section: Callable[[], None], results: dict[str, Any], left: float) -> None:
    """Run one section of the benchmark; its failure goes into `errors` with the traceback on stderr, so
    that one failing section does not lose the others' figures."""
    print(f"[{time.strftime('%H:%M:%S')}] == {name} ({left:.0f}s of budget left)", flush=True)
    try:
        section()
    except Exception as exc:
        traceback.print_exc()
        results["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
