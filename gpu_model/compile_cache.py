"""Where torch keeps what it compiles, so that a new worker process reuses what an earlier one compiled.

Inductor (its FX graph and AOTAutograd caches, autotuning results), Triton (compiled kernels), the CUDA
driver (PTX compiled for this GPU) and transformers (its copy of the model's remote code) each keep their
artefacts in a folder of their own, by default under /tmp or the user's home: a new container starts without
them and compiles everything again. `point_caches` puts them in one folder (a docker volume) and switches on
the persistent caches, through the environment, before torch is imported; a cache the environment already
names stays where it is. Torch-free, except `persistent_caches` and `compile_counters`, which read torch's
own state once it is imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

#: Each cache's environment variable and its subfolder of the compile cache folder.
CACHE_FOLDERS: dict[str, str] = {
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "TRITON_CACHE_DIR": "triton",
    "CUDA_CACHE_PATH": "cuda",
    "HF_MODULES_CACHE": "hf-modules",
}
#: transformers derives its modules cache from HF_HOME: a user who set that chose where it goes.
HF_MODULES_PARENTS = ("HF_HOME",)
#: Switches of torch's persistent caches (on by default in torch 2.13), read when torch's config modules are
#: first imported. Set in the environment they hold in every thread; an assignment to torch's config holds
#: only in the thread that makes it (torch keeps those in context variables).
PERSISTENT_SWITCHES: dict[str, str] = {
    "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
    "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
}
#: (config module, name, the variable that forces it) of each persistent cache, as torch 2.13 names them.
PERSISTENT_CONFIGS = (
    ("torch._inductor.config", "fx_graph_cache", "TORCHINDUCTOR_FX_GRAPH_CACHE"),
    ("torch._functorch.config", "enable_autograd_cache", "TORCHINDUCTOR_AUTOGRAD_CACHE"),
)
#: Torch's switch that turns every compile cache off whatever the others say.
FORCE_DISABLE = ("torch._inductor.config", "force_disable_caches")
#: Counters torch keeps of its persistent caches: (counters group, key, what it counts).
CACHE_COUNTERS = (
    ("inductor", "fxgraph_cache_hit", "Inductor cache hits"),
    ("inductor", "fxgraph_cache_miss", "Inductor cache misses"),
    ("aot_autograd", "autograd_cache_hit", "AOTAutograd cache hits"),
    ("aot_autograd", "autograd_cache_miss", "AOTAutograd cache misses"),
)


@dataclass(frozen=True)
class CacheSetup:
    """Where this process's compile caches are: each variable's value and who chose it."""

    #: The compile cache folder; None: the setting is empty and torch's defaults stand.
    folder: Path | None
    #: Variables this process set (variable -> value).
    set: dict[str, str] = field(default_factory=dict)
    #: Variables the environment already held (variable -> value), left as they were.
    kept: dict[str, str] = field(default_factory=dict)
    #: Variables set too late to matter: the module that reads them was already imported (variable -> module).
    late: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the log."""
        if self.folder is None:
            return "compile cache: off (OVIS_BATCH_COMPILE_CACHE is empty); torch's default folders"
        parts = [f"{name}={value}" for name, value in self.set.items() if name in CACHE_FOLDERS]
        parts += [f"{name}={value} (already set)" for name, value in self.kept.items()]
        parts += [f"{name} too late: {module} already imported" for name, module in self.late.items()]
        return f"compile cache {self.folder}: " + ", ".join(parts)

    def as_record(self) -> dict[str, object]:
        """The setup as a benchmark records it."""
        return {
            "folder": str(self.folder) if self.folder else None,
            "set": dict(self.set),
            "kept": dict(self.kept),
            "late": dict(self.late),
        }


#: Modules that read a variable once, when they are imported.
_READ_AT_IMPORT = {
    "HF_MODULES_CACHE": "transformers",
    "TORCHINDUCTOR_FX_GRAPH_CACHE": "torch._inductor.config",
    "TORCHINDUCTOR_AUTOGRAD_CACHE": "torch._functorch.config",
}


def point_caches(folder: Path | str | None, environ: MutableMapping[str, str] | None = None) -> CacheSetup:
    """Point the compile caches into `folder` (None: leave torch's defaults) and switch the persistent caches
    on, in `environ` (this process's environment by default), leaving every variable already set as it is.
    Call it before torch and transformers are imported (CUDA reads its variable when it starts)."""
    env = os.environ if environ is None else environ
    if folder is None:
        return CacheSetup(None)
    root = Path(folder).expanduser().resolve()
    wanted = {name: str(root / sub) for name, sub in CACHE_FOLDERS.items()}
    wanted.update(PERSISTENT_SWITCHES)
    chosen, kept, late = {}, {}, {}
    for name, value in wanted.items():
        parents = [p for p in HF_MODULES_PARENTS if p in env] if name == "HF_MODULES_CACHE" else []
        if name in env or parents:
            kept[name] = env[name] if name in env else f"under {parents[0]}={env[parents[0]]}"
            continue
        if name in CACHE_FOLDERS:
            Path(value).mkdir(parents=True, exist_ok=True)
        env[name] = chosen[name] = value
        reader = _READ_AT_IMPORT.get(name)
        if environ is None and reader is not None and reader in sys.modules:
            late[name] = reader
    return CacheSetup(root, chosen, kept, late)


def persistent_caches() -> dict[str, object]:
    """Torch's persistent compile caches as this thread sees them (config name -> value, or why not), after
    checking that each config exists in the installed torch. One that reads off without the user having
    turned it off is switched on for this thread (torch was imported before `point_caches`)."""
    import importlib

    state: dict[str, object] = {}
    for module_name, name, variable in PERSISTENT_CONFIGS:
        config = importlib.import_module(module_name)
        key = f"{module_name.removeprefix('torch.')}.{name}"
        if not hasattr(config, name):
            state[key] = "absent in this torch"
            continue
        if not getattr(config, name) and os.environ.get(variable) != "0":
            setattr(config, name, True)
        state[key] = getattr(config, name)
    module_name, name = FORCE_DISABLE
    config = importlib.import_module(module_name)
    if hasattr(config, name):
        state[f"{module_name.removeprefix('torch.')}.{name}"] = getattr(config, name)
    return state


def inductor_cache_dir() -> str:
    """The folder Inductor caches in (its default under the temporary folder when unset)."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen:
        return chosen
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return "torch's default folder"
    return str(default_cache_dir())


def compile_counters() -> dict[str, int]:
    """Torch's persistent-cache counters so far in this process (all zero before torch compiled anything)."""
    utils = sys.modules.get("torch._dynamo.utils")
    counters = getattr(utils, "counters", None)
    if counters is None:
        return {key: 0 for _, key, _ in CACHE_COUNTERS}
    return {key: int(counters[group][key]) for group, key, _ in CACHE_COUNTERS}


def describe_compiles(before: dict[str, int], after: dict[str, int]) -> str:
    """What the caches did between two `compile_counters` readings, for the log."""
    parts = [
        f"{after[key] - before.get(key, 0)} {what}"
        for _, key, what in CACHE_COUNTERS
        if after[key] - before.get(key, 0)
    ]
    return ", ".join(parts) if parts else "nothing compiled"
