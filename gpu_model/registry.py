"""Backends by name, imported only when chosen so that torch stays out of processes that do not need it."""

from __future__ import annotations

import importlib

from gpu_model.base import Backend, BackendOptions

#: name -> "module:class"
BACKENDS: dict[str, str] = {
    "fake": "gpu_model.fake:FakeBackend",
    "tiny": "gpu_model.tiny:TinyBackend",
    "ovis-u1": "gpu_model.ovis_u1:OvisU1Backend",
    "ovis-u1-shaped": "gpu_model.shaped:ShapedBackend",
}


def create_backend(name: str, options: BackendOptions | None = None) -> Backend:
    """Instantiate the backend registered as `name` (not yet loaded)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown backend {name!r}; choose one of: {known}") from None
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(options or BackendOptions())
    return backend
