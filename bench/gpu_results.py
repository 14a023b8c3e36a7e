"""The raw result file of one GPU benchmark run, and what it says about where and how it ran.

Every run writes its own file, `gpu_throughput-<UTC timestamp>-<gpu>.json`, never another run's: the name
is taken with an exclusive create, and a second run in the same second gets a `-2` suffix. The file is
rewritten as the run's sections end (write to a temporary file, then rename), so a run that is stopped keeps
what it measured. It records the date, the git commit, the machine (GPU, driver, CPUs), the library
versions and the command line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = "gpu_throughput"
#: Libraries whose versions the file records (distribution names).
LIBRARIES = (
    "torch",
    "transformers",
    "diffusers",
    "tokenizers",
    "huggingface_hub",
    "accelerate",
    "numpy",
    "pillow",
)


def utc_now() -> dt.datetime:
    """Now, in UTC, to the second."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def slug(text: str) -> str:
    """Lower-case letters, digits and single dashes: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(given_sha: str | None = None) -> dict[str, Any]:
    """The checkout's commit and whether its tracked files differ from it; on a copy without .git (a GPU host
    gets the working tree alone), the commit given on the command line."""
    sha = _run(["git", "rev-parse", "HEAD"])
    if sha is not None:
        status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
        return {"sha": sha, "dirty": bool(status), "source": "git"}
    if given_sha:
        return {"sha": given_sha, "dirty": None, "source": "--git-sha (no .git where it ran)"}
    return {"sha": None, "dirty": None, "source": "no .git where it ran and no --git-sha"}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """The machine (GPU, driver, CPUs) and the library versions the run used."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        **{name: _version(name) for name in LIBRARIES},
        "torch_imported": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
        smi = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        info["driver"] = smi.splitlines()[0] if smi else None
    else:
        info["gpu"] = None
    return info


def provenance(argv: list[str], given_sha: str | None) -> dict[str, Any]:
    """What the file says about the run itself: when, which commit, which command."""
    started = utc_now()
    return {
        "bench": BENCH,
        "date": started.strftime("%Y-%m-%d"),
        "started_at": started.isoformat().replace("+00:00", "Z"),
        "git": git_state(given_sha),
        "command": shlex.join([Path(sys.executable).name, *argv]),
    }


class RunFile:
    """This run's result file: its name claimed once, its content replaced as the run goes on."""

    def __init__(self, folder: Path, gpu: str | None, when: dt.datetime | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        stamp = (when or utc_now()).strftime("%Y%m%dT%H%M%SZ")
        base = f"{BENCH}-{stamp}-{slug(gpu or 'cpu')}"
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
