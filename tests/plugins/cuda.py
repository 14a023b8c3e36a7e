"""The ``cuda`` marker: tests that need a CUDA GPU are skipped where torch sees none.

``make test-gpu`` runs them alone (``pytest -m cuda``) with ``OVIS_TEST_REQUIRE_CUDA=1``, under which a
machine without CUDA is an error instead of a run where everything was skipped.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_CUDA_ENV = "OVIS_TEST_REQUIRE_CUDA"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the collected ``cuda`` tests without a GPU; torch is imported only when there are some."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked or _cuda_available():
        return
    if os.environ.get(REQUIRE_CUDA_ENV) == "1":
        raise pytest.UsageError(
            f"{len(marked)} tests need CUDA, but torch sees no CUDA device here "
            f"({REQUIRE_CUDA_ENV}=1: run them on a GPU machine with a CUDA build of torch)"
        )
    skip = pytest.mark.skip(reason="needs a CUDA GPU (`make test-gpu` on a GPU machine runs these)")
    for item in marked:
        item.add_marker(skip)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
