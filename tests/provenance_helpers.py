"""The reader of provenance README shows, run as written, and what a row's provenance looks like in a file."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.provenance import as_text

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_reader() -> Callable[[str | Path], dict[str, str]]:
    """The `provenance(path)` function of README's Python block that calls `getxmp()`, defined as written."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    [source] = [block for block in blocks if "getxmp()" in block and "def provenance" in block]
    namespace: dict[str, Any] = {}
    exec(compile(source, str(README), "exec"), namespace)
    reader: Callable[[str | Path], dict[str, str]] = namespace["provenance"]
    return reader


def as_embedded(provenance: dict[str, Any]) -> dict[str, str]:
    """A recorded provenance as an image holds it: text values, unset fields left out."""
    return {name: as_text(value) for name, value in provenance.items() if value is not None}
