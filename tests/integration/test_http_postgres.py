"""The HTTP API on PostgreSQL where it differs from SQLite: a NUL in a job id, which PostgreSQL refuses in any
text, is a 422 naming `job_id` and not a 500; and times come back in the session's zone, which the API writes
in UTC with its offset."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from jobs.api import Client
from jobs.db import dispose_engines, upgrade
from jobs.errors import InvalidParameters
from jobs.http.app import create_app
from jobs.lifecycle import JobKind
from jobs.settings import Settings
from jobs.submit import ItemSpec

pytestmark = pytest.mark.integration


class KeptChunks:
    """A dispatcher that keeps the chunks: no worker runs them."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Nothing to do."""


@pytest.fixture
def settings(pg_database: str, tmp_path: Path) -> Settings:
    # A session zone other than UTC, as a server configured for its region hands out.
    url = make_url(pg_database).update_query_dict({"options": "-c timezone=America/New_York"})
    database_url = url.render_as_string(hide_password=False)
    upgrade(database_url)
    return Settings(home=tmp_path, database_url=database_url, input_roots=[str(tmp_path)])


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, dispatcher=KeptChunks()), raise_server_exceptions=False) as client:
        yield client
    dispose_engines()


@pytest.mark.parametrize("given", ["abcdef12\x00", "abcdef12\x00ff", "abcdefgh", "abcdef12 ff"])
@pytest.mark.parametrize(("method", "path"), [("GET", ""), ("GET", "/results"), ("POST", "/cancel")])
def test_a_job_id_that_is_not_hex_is_a_422_naming_job_id(
    api: TestClient, settings: Settings, given: str, method: str, path: str
) -> None:
    Client(settings, KeptChunks()).submit_items(JobKind.GENERATE, [ItemSpec(key="a", text="a fox")])
    answer = api.request(method, f"/v1/jobs/{quote(given)}{path}")

    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_parameters", "job_id")


def test_the_client_refuses_a_nul_before_postgresql_sees_it(settings: Settings) -> None:
    client = Client(settings, KeptChunks())
    job_id = client.submit_items(JobKind.GENERATE, [ItemSpec(key="a", text="a fox")])

    with pytest.raises(InvalidParameters, match="not a job id"):
        client.resolve(job_id[:8] + "\x00")
    assert client.resolve(job_id[:8]) == job_id, "the session is still usable"


def test_times_are_written_in_utc_whatever_the_session_zone(api: TestClient, settings: Settings) -> None:
    job_id = Client(settings, KeptChunks()).submit_items(JobKind.GENERATE, [ItemSpec(key="a", text="a fox")])
    api.post(f"/v1/jobs/{job_id}/cancel")
    report = Client(settings, KeptChunks()).status(job_id)
    assert report.created_at is not None and report.created_at.utcoffset() != 0, "the session is not in UTC"

    status = api.get(f"/v1/jobs/{job_id}").json()
    for name in ("created_at", "finished_at"):
        assert status[name].endswith("+00:00"), status
        assert datetime.fromisoformat(status[name]) == getattr(report, name)
