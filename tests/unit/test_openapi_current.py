"""jobs/http/openapi.json, the API's document as checked in (and linked from the README), is what the code
generates, and it tells a client how to authenticate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.http import openapi
from jobs.http.app import create_app
from jobs.http.auth import new_token, token_entry
from jobs.http.errors import ErrorBody
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


def test_every_refusal_of_every_operation_is_the_error_body(generated: dict[str, Any]) -> None:
    error_ref = "#/components/schemas/ErrorBody"
    assert set(generated["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}
    detail = generated["components"]["schemas"]["ErrorDetail"]
    assert set(detail["properties"]) == set(detail["required"]) == {"code", "message", "field", "line"}

    refusals: dict[str, list[str]] = {}
    others = []
    for path, operations in generated["paths"].items():
        for method, operation in operations.items():
            name = f"{method.upper()} {path}"
            for status, response in operation["responses"].items():
                if status.startswith("2"):
                    continue
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                if name == "GET /v1/health" and status == "503":  # health answers its own body, down
                    assert schema == {"$ref": "#/components/schemas/Health"}
                elif schema.get("$ref") == error_ref:
                    refusals.setdefault(name, []).append(status)
                else:
                    others.append(f"{name} {status}: {schema}")
    assert others == [], "refusals documented with another body than {error: {code, message, field, line}}"
    assert "HTTPValidationError" not in generated["components"]["schemas"]
    assert sorted(refusals["POST /v1/jobs"]) == ["401", "403", "409", "422", "503"]
    assert sorted(refusals["GET /v1/jobs/{job_id}"]) == ["401", "404", "422", "503"]
    assert all("401" in statuses for statuses in refusals.values())
    assert len(refusals) == sum(len(operations) for operations in generated["paths"].values()) - 1


def test_the_api_answers_refusals_with_the_documented_body(tmp_path: Path) -> None:
    token = new_token()
    settings = Settings(home=tmp_path, api_tokens=[token_entry("dashboard", "read", token)])
    with TestClient(create_app(settings)) as client:
        reader = {"Authorization": f"Bearer {token}"}
        answers = {
            401: client.get("/v1/jobs"),
            403: client.post(f"/v1/jobs/{'f' * 32}/cancel", headers=reader),
            404: client.get(f"/v1/jobs/{'f' * 32}", headers=reader),
            422: client.get("/v1/jobs?limit=0", headers=reader),
        }
    for status, answer in answers.items():
        assert answer.status_code == status, answer.text
        assert ErrorBody.model_validate(answer.json()).model_dump() == answer.json()
