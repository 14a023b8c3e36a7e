"""jobs/http/openapi.json, the API's document as checked in (and linked from the README), is what the code
generates, and it tells a client how to authenticate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.http import openapi
from jobs.http.app import create_app
from jobs.settings import Settings


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return openapi.document()


def test_the_checked_in_document_is_current(generated: dict[str, Any]) -> None:
    checked_in = openapi.DOCUMENT.read_text(encoding="utf-8") if openapi.DOCUMENT.exists() else ""

    assert checked_in == openapi.render(generated), (
        f"{openapi.DOCUMENT.name} is behind the code: run `{openapi.REFRESH}` and commit it"
    )


def test_generating_twice_gives_the_same_text(generated: dict[str, Any]) -> None:
    assert openapi.render(openapi.document()) == openapi.render(generated)


def test_the_environment_does_not_change_the_document(
    generated: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVIS_BATCH_API_MAX_INLINE_ITEMS", "7")
    monkeypatch.setenv("OVIS_BATCH_API_TOKENS", "ci:read:" + "0" * 64)

    assert openapi.document() == generated


def test_the_app_serves_the_document(generated: dict[str, Any], tmp_path: Path) -> None:
    with TestClient(create_app(Settings(home=tmp_path))) as client:
        served = client.get("/openapi.json")

    assert served.status_code == 200
    assert served.json() == generated


def test_every_endpoint_but_health_asks_for_a_bearer_token(generated: dict[str, Any]) -> None:
    schemes = generated["components"]["securitySchemes"]
    bearer = [name for name, s in schemes.items() if s["type"] == "http" and s.get("scheme") == "bearer"]
    assert bearer, f"no bearer security scheme in the document: {schemes}"

    open_paths = []
    for path, operations in generated["paths"].items():
        for method, operation in operations.items():
            names = {name for requirement in operation.get("security", []) for name in requirement}
            if not names & set(bearer):
                open_paths.append(f"{method.upper()} {path}")
    assert open_paths == ["GET /v1/health"]
