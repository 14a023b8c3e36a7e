"""A job named by something that is no job id (a NUL, a letter past f) is a 422 naming `job_id` on every job
endpoint, never a 500; and every time the API and `status --json` write carries its UTC offset (SQLite gives
times back without one)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from jobs import cli
from jobs.api import Client
from jobs.http.app import create_app
from jobs.lifecycle import JobKind
from jobs.settings import Settings
from jobs.submit import ItemSpec
from tests.helpers import embedded_settings
from workers.embedded import EmbeddedRunner

#: Job ids as a path gives them, percent-encoded: each holds something that is not a hex digit.
NOT_IDS = [
    "abcdef12%00",
    "abcdef12%00ffff",
    "%00%00%00%00%00%00%00%00",
    "abcdefgh",
    "abcdef12%20ff",
    "abcdef1_",
]
ENDPOINTS = [
    ("GET", ""),
    ("GET", "/failures"),
    ("GET", "/results"),
    ("GET", "/items/item000/output"),
    ("POST", "/cancel"),
    ("POST", "/retry"),
    ("POST", "/resume"),
]


class KeptChunks:
    """A dispatcher that keeps the chunks: no worker runs them."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Nothing to do."""


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    return embedded_settings(tmp_path)


@pytest.fixture
def api(home: Settings) -> TestClient:
    return TestClient(create_app(home, dispatcher=KeptChunks()), raise_server_exceptions=False)


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("given", NOT_IDS)
def test_a_job_id_that_is_not_hex_is_a_422_naming_job_id(
    api: TestClient, home: Settings, method: str, path: str, given: str
) -> None:
    Client(home, KeptChunks()).submit_items(JobKind.GENERATE, [ItemSpec(key="item000", text="a fox")])
    answer = api.request(method, f"/v1/jobs/{given}{path}")

    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_parameters", "job_id"), error
    assert "not a job id" in error["message"]


def test_a_prefix_of_a_job_still_names_it_and_a_short_one_is_named_job_id(
    api: TestClient, home: Settings
) -> None:
    job_id = Client(home, KeptChunks()).submit_items(JobKind.GENERATE, [ItemSpec(key="a", text="a fox")])

    assert api.get(f"/v1/jobs/{job_id[:8].upper()}").json()["id"] == job_id
    short = api.get(f"/v1/jobs/{job_id[:7]}")
    assert (short.status_code, short.json()["error"]["field"]) == (422, "job_id")


def test_the_cli_refuses_a_job_id_that_is_not_hex(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "get_settings", lambda: home)
    result = CliRunner().invoke(cli.app, ["status", "abcdefgh"])

    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "not a job id" in line


def _zoned(text: str | None) -> bool:
    return (
        text is not None and text.endswith("+00:00") and datetime.fromisoformat(text).utcoffset() is not None
    )


def test_every_time_of_a_job_carries_its_utc_offset(
    api: TestClient, home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = home.home / "prompts.txt"
    prompts.write_text("a fox\na kite\n")
    job_id = EmbeddedRunner(home).run(JobKind.GENERATE, str(prompts)).id

    status = api.get(f"/v1/jobs/{job_id}").json()
    [listed] = api.get("/v1/jobs").json()["jobs"]
    for shown in (status, listed):
        assert all(_zoned(shown[name]) for name in ("created_at", "started_at", "finished_at")), shown
    monkeypatch.setattr(cli, "get_settings", lambda: home)
    result = CliRunner().invoke(cli.app, ["status", job_id, "--json"])
    printed = json.loads(result.stdout)
    assert [printed[name] for name in ("created_at", "started_at", "finished_at")] == [
        status["created_at"],
        status["started_at"],
        status["finished_at"],
    ]
