"""Dependencies point one way (design.md): workers -> jobs, gpu_model, storage; jobs -> storage; gpu_model and
storage depend on no other package of the project. Checked on every import statement of every module,
function bodies included, and by importing the producer side in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "workers", "gpu_model", "storage")
#: What each package may import of the project. jobs keeps the Alembic environment (migrations) it runs.
ALLOWED = {
    "workers": {"jobs", "gpu_model", "storage", "migrations"},
    "jobs": {"storage", "migrations"},
    "gpu_model": set(),
    "storage": set(),
}
PROJECT = {*PACKAGES, "migrations", "tests", "bench"}
#: The model stack: only gpu_model's implementations import it.
MODEL_STACK = ("torch", "transformers", "diffusers", "accelerate")
#: Modules a producer never loads: importing every jobs module must leave them out of sys.modules.
NEVER_IN_PRODUCER = ("torch", "transformers", "diffusers", "workers", "gpu_model")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
}


def _imports(name: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in module `name`, wherever it stands (functions,
    TYPE_CHECKING blocks); `from a import b` gives `a.b` when that is a module of the project, else `a`."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full if full in MODULES else base))
    return list(dict.fromkeys(found))


def _where(name: str, line: int) -> str:
    return f"{MODULES[name].relative_to(ROOT)}:{line}"


def test_packages_import_only_the_packages_below_them() -> None:
    wrong = []
    for name in MODULES:
        own = name.split(".")[0]
        for line, target in _imports(name):
            top = target.split(".")[0]
            if top in PROJECT and top != own and top not in ALLOWED[own]:
                wrong.append(f"{_where(name, line)} imports {target}")
    assert not wrong, "imports against the layering (workers -> jobs -> storage):\n" + "\n".join(wrong)


def test_only_gpu_model_imports_the_model_stack() -> None:
    wrong = [
        f"{_where(name, line)} imports {target}"
        for name in MODULES
        if not name.startswith("gpu_model")
        for line, target in _imports(name)
        if target.split(".")[0] in MODEL_STACK
    ]
    assert not wrong, "\n".join(wrong)


def test_storage_is_used_through_its_package_interface() -> None:
    wrong = [
        f"{_where(name, line)} imports {target}: import it from the storage package"
        for name in MODULES
        if not name.startswith("storage")
        for line, target in _imports(name)
        if target.startswith("storage.")
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", ["jobs", "storage"])
def test_modules_of_a_package_import_one_another_without_a_cycle(package: str) -> None:
    graph = {
        name: {target for _, target in _imports(name) if target in MODULES and target != name}
        for name in MODULES
        if name.startswith(package + ".")
    }
    graph = {name: {target for target in targets if target in graph} for name, targets in graph.items()}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as a path that ends where it starts, or None (depth first, without recursion)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, pending = [start], [iter(sorted(graph[start]))]
        while pending:
            target = next(pending[-1], None)
            if target is None:
                pending.pop()
                done.add(path.pop())
            elif target in path:
                return [*path[path.index(target) :], target]
            elif target not in done:
                path.append(target)
                pending.append(iter(sorted(graph[target])))
    return None


def test_cycles_are_found() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


_IMPORT_EVERY_JOBS_MODULE = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
watched = json.loads(sys.argv[2])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in watched)))
"""


def _loaded_after_importing(modules: list[str], watched: tuple[str, ...]) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERY_JOBS_MODULE, json.dumps(modules), json.dumps(watched)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_the_producer_side_runs_without_workers_gpu_model_or_the_model_stack() -> None:
    jobs_modules = sorted(name for name in MODULES if name.split(".")[0] == "jobs")
    assert _loaded_after_importing(jobs_modules, NEVER_IN_PRODUCER) == []


def test_the_console_script_starts_without_the_model_stack() -> None:
    # The producer image has no torch: its commands come through the same script as the worker's.
    assert _loaded_after_importing(["workers.cli"], (*MODEL_STACK, "gpu_model")) == []
