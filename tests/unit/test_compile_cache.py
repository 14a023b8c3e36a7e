"""The compile cache: the worker points torch's caches into OVIS_BATCH_COMPILE_CACHE before its backend
imports torch, never over a cache the user placed, and torch sees the persistent caches on in every thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpu_model import BackendOptions
from gpu_model.compile_cache import (
    CACHE_FOLDERS,
    HF_MODULES_PARENTS,
    PERSISTENT_SWITCHES,
    describe_compiles,
    persistent_caches,
    point_caches,
)
from gpu_model.fake import FakeBackend
from jobs.settings import Settings
from workers import runtime as runtime_module
from workers.runtime import WorkerRuntime

ROOT = Path(__file__).resolve().parents[2]
VARIABLES = (*CACHE_FOLDERS, *HF_MODULES_PARENTS, *PERSISTENT_SWITCHES)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """None of the cache variables set, and whatever a test sets taken back afterwards."""
    for name in VARIABLES:
        monkeypatch.setenv(name, "placeholder")  # remembers the original, so undo removes what tests set
        monkeypatch.delenv(name)
    yield monkeypatch


def test_the_default_folder_is_under_home_and_an_empty_setting_turns_it_off(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).resolved_compile_cache == tmp_path / "compile-cache"
    assert Settings(home=tmp_path, compile_cache=str(tmp_path / "kept")).resolved_compile_cache == (
        tmp_path / "kept"
    )
    assert Settings(home=tmp_path, compile_cache="").resolved_compile_cache is None


def test_every_cache_goes_under_the_folder_and_the_persistent_caches_are_switched_on(tmp_path: Path) -> None:
    env: dict[str, str] = {"PATH": "/usr/bin"}

    setup = point_caches(tmp_path / "cache", env)

    root = (tmp_path / "cache").resolve()
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(root / "inductor")
    assert env["TRITON_CACHE_DIR"] == str(root / "triton")
    assert env["CUDA_CACHE_PATH"] == str(root / "cuda")
    assert env["HF_MODULES_CACHE"] == str(root / "hf-modules")
    assert env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == env["TORCHINDUCTOR_AUTOGRAD_CACHE"] == "1"
    assert all((root / sub).is_dir() for sub in CACHE_FOLDERS.values())
    assert setup.kept == {} and setup.folder == root
    assert str(root / "inductor") in setup.describe()


def test_caches_the_user_placed_stay_where_they_are(tmp_path: Path) -> None:
    env = {"TRITON_CACHE_DIR": "/mine/triton", "HF_HOME": "/mine/hf", "TORCHINDUCTOR_FX_GRAPH_CACHE": "0"}

    setup = point_caches(tmp_path / "cache", env)

    assert env["TRITON_CACHE_DIR"] == "/mine/triton"
    assert env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "0"  # turned off by the user: off it stays
    assert "HF_MODULES_CACHE" not in env  # under HF_HOME, where transformers puts it
    assert set(setup.kept) == {"TRITON_CACHE_DIR", "HF_MODULES_CACHE", "TORCHINDUCTOR_FX_GRAPH_CACHE"}
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cache" / "inductor").resolve())
    assert "/mine/triton (already set)" in setup.describe()


def test_an_empty_setting_leaves_the_environment_alone(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin"}

    setup = point_caches(Settings(home=tmp_path, compile_cache="").resolved_compile_cache, env)

    assert env == {"PATH": "/usr/bin"} and setup.folder is None
    assert "off" in setup.describe()


class _Recorded(FakeBackend):
    """A torch-free backend that remembers the cache variables as they were when it was built."""

    seen: dict[str, str | None] = {}

    def __init__(self, options: BackendOptions | None = None) -> None:
        super().__init__(options)
        _Recorded.seen = {name: os.environ.get(name) for name in VARIABLES}


def _build(name: str, options: BackendOptions | None = None) -> Any:
    return _Recorded(options)


def test_the_worker_points_the_caches_before_it_builds_its_backend(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setattr(runtime_module, "create_backend", _build)

    runtime = WorkerRuntime(Settings(home=tmp_path, backend="fake"))

    root = (tmp_path / "compile-cache").resolve()
    assert _Recorded.seen["TORCHINDUCTOR_CACHE_DIR"] == str(root / "inductor")
    assert _Recorded.seen["TRITON_CACHE_DIR"] == str(root / "triton")
    assert _Recorded.seen["CUDA_CACHE_PATH"] == str(root / "cuda")
    assert _Recorded.seen["HF_MODULES_CACHE"] == str(root / "hf-modules")
    assert _Recorded.seen["TORCHINDUCTOR_AUTOGRAD_CACHE"] == "1"
    assert runtime.compile_cache.folder == root


def test_the_worker_never_moves_a_cache_the_user_placed(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setattr(runtime_module, "create_backend", _build)
    clean_env.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))

    runtime = WorkerRuntime(Settings(home=tmp_path, backend="fake", compile_cache=str(tmp_path / "shared")))

    assert _Recorded.seen["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    assert _Recorded.seen["TRITON_CACHE_DIR"] == str((tmp_path / "shared" / "triton").resolve())
    assert runtime.compile_cache.kept == {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "mine")}


_FRESH_INTERPRETER = """
import json, sys, threading
from gpu_model.compile_cache import persistent_caches, point_caches
setup = point_caches(sys.argv[1])
import torch
from torch._inductor.runtime.cache_dir_utils import cache_dir
seen = {}
def read():  # a thread of its own, as the worker's chunk thread
    seen.update(persistent_caches(), inductor=cache_dir())
thread = threading.Thread(target=read)
thread.start()
thread.join()
print(json.dumps({"seen": seen, "late": setup.late}))
"""


@pytest.mark.parametrize("user_fx_graph_cache", [None, "0"])
def test_a_fresh_process_compiles_into_the_folder_with_the_persistent_caches_on_in_every_thread(
    tmp_path: Path, user_fx_graph_cache: str | None
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env["PYTHONPATH"] = str(ROOT)
    if user_fx_graph_cache is not None:
        env["TORCHINDUCTOR_FX_GRAPH_CACHE"] = user_fx_graph_cache

    done = subprocess.run(
        [sys.executable, "-c", _FRESH_INTERPRETER, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )

    answer = json.loads(done.stdout.strip().splitlines()[-1])
    seen = answer["seen"]
    assert seen["inductor"] == str((tmp_path / "cache" / "inductor").resolve())
    assert seen["_inductor.config.fx_graph_cache"] is (user_fx_graph_cache is None)
    assert seen["_functorch.config.enable_autograd_cache"] is True
    assert seen["_inductor.config.force_disable_caches"] is False
    assert answer["late"] == {}


def test_the_persistent_cache_configs_exist_in_this_torch() -> None:
    state = persistent_caches()

    assert set(state) == {
        "_inductor.config.fx_graph_cache",
        "_functorch.config.enable_autograd_cache",
        "_inductor.config.force_disable_caches",
    }
    assert all(isinstance(value, bool) for value in state.values())


def test_cache_counters_read_as_a_log_line() -> None:
    before = {
        "fxgraph_cache_hit": 1,
        "fxgraph_cache_miss": 0,
        "autograd_cache_hit": 0,
        "autograd_cache_miss": 2,
    }
    after = {
        "fxgraph_cache_hit": 4,
        "fxgraph_cache_miss": 0,
        "autograd_cache_hit": 0,
        "autograd_cache_miss": 3,
    }

    assert describe_compiles(before, after) == "3 Inductor cache hits, 1 AOTAutograd cache misses"
    assert describe_compiles(after, after) == "nothing compiled"
