"""The installed version of ovis-batch: `ovis-batch --version`, and the User-Agent of notifications."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def package_version() -> str:
    """The version the package was installed with; `0+unknown` when run from a tree never installed."""
    try:
        return version("ovis-batch")
    except PackageNotFoundError:
        return "0+unknown"
