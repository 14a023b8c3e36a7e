"""One raw result file per benchmark run: what it measured, with when, where, from which code and how it ran.

A file is written once, under a name no other run takes (`<bench>-<UTC time>-<host>.json`), and never edited
afterwards; bench/report.py turns the folder into bench/RESULTS.md.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
#: Libraries whose versions a result depends on (those installed are recorded).
LIBRARIES = (
    "torch",
    "transformers",
    "diffusers",
    "celery",
    "kombu",
    "redis",
    "sqlalchemy",
    "psycopg",
    "boto3",
)


def _git_sha() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _dirty() -> bool | None:
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=RESULTS.parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(done.stdout.strip())


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def run_metadata(
    extra_machine: dict[str, Any] | None = None, *, when: dt.datetime | None = None
) -> dict[str, Any]:
    """Date, code, machine, library versions and command line of this run."""
    return {
        "date": (when or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_sha": _git_sha(),
        "git_dirty": _dirty(),
        "machine": {
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            **(extra_machine or {}),
        },
        "versions": _versions(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


def write_result(
    bench: str,
    result: dict[str, Any],
    *,
    folder: Path = RESULTS,
    tag: str = "",
    machine: dict[str, Any] | None = None,
    when: dt.datetime | None = None,
) -> Path:
    """Write this run's file and return its path; an existing file is never replaced (FileExistsError)."""
    meta = run_metadata(machine, when=when)
    stamp = meta["date"].replace(":", "").replace("-", "")
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag or meta["machine"]["host"]).strip("-") or "run"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{bench}-{stamp}-{label}.json"
    body = json.dumps({"bench": bench, **meta, **result}, indent=2, sort_keys=False) + "\n"
    with open(path, "x", encoding="utf-8") as out:  # "x": never over another run's file
        out.write(body)
    return path
