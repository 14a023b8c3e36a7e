"""The API's OpenAPI document, as checked in beside this module (jobs/http/openapi.json):

    python -m jobs.http.openapi > jobs/http/openapi.json

It is what the app serves at /openapi.json, built for the default settings rather than this environment's
OVIS_BATCH_* variables, and printed with sorted keys, so that the same code gives the same file on any
machine; tests/unit/test_openapi_current.py fails when the checked-in file is behind the code.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from jobs.settings import Settings

#: The checked-in document (package data).
DOCUMENT = Path(__file__).with_name("openapi.json")
#: The command that writes it, from the repository's root.
REFRESH = ".venv/bin/python -m jobs.http.openapi > jobs/http/openapi.json"


def document() -> dict[str, Any]:
    """The OpenAPI document of `create_app` on the default settings."""
    from jobs.http.app import create_app

    # The app's client migrates an embedded database when it starts: one in a folder of its own, thrown away.
    with tempfile.TemporaryDirectory(prefix="ovis-openapi-") as home:
        settings = Settings.model_construct(home=Path(home))  # defaults only: no environment variable read
        spec: dict[str, Any] = create_app(settings).openapi()
    return spec


def render(spec: dict[str, Any]) -> str:
    """The document as the checked-in file holds it: indented JSON, keys sorted, a final newline."""
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    """Print the document."""
    sys.stdout.write(render(document()))


if __name__ == "__main__":
    main()
