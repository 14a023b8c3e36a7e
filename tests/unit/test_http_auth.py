"""Authentication of the HTTP API: tokens kept only as hashes, the read and submit scopes, 401 and 403 as a
client meets them, no cookies, and an API without tokens served on loopback only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from jobs.cli import app as cli
from jobs.errors import InvalidParameters
from jobs.http.app import create_app
from jobs.http.auth import check_bind, new_token, parse_tokens, token_entry
from jobs.lifecycle import JobKind
from jobs.settings import Settings
from tests.helpers import embedded_settings

READER = new_token()
SUBMITTER = new_token()
BOTH = new_token()
ONE_PROMPT = {"kind": "generate", "items": [{"prompt": "a lighthouse at dusk"}]}


class KeptChunks:
    """A dispatcher that keeps the chunks: no worker runs them."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Nothing to do."""


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    entries = [
        token_entry("reader", "read", READER),
        token_entry("submitter", "submit", SUBMITTER),
        f"both:read+submit:{hashlib.sha256(BOTH.encode()).hexdigest()}",
    ]
    return embedded_settings(tmp_path, api_tokens=entries)


@pytest.fixture
def api(home: Settings) -> TestClient:
    return TestClient(create_app(home, dispatcher=KeptChunks()))


def _submit(api: TestClient, token: str | None) -> int:
    headers = _bearer(token) if token is not None else {}
    return api.post("/v1/jobs", json=ONE_PROMPT, headers=headers).status_code


def test_each_token_is_its_name_and_scopes_and_submit_implies_read(api: TestClient) -> None:
    assert api.get("/v1/whoami", headers=_bearer(READER)).json() == {"name": "reader", "scopes": ["read"]}
    assert api.get("/v1/whoami", headers=_bearer(SUBMITTER)).json() == {
        "name": "submitter",
        "scopes": ["read", "submit"],
    }
    assert api.get("/v1/whoami", headers=_bearer(BOTH)).json()["scopes"] == ["read", "submit"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Basic {READER}"},
        {"Authorization": f"Bearer {READER}x"},
        {"Authorization": f"Bearer {hashlib.sha256(READER.encode()).hexdigest()}"},
    ],
    ids=["none", "empty", "unknown", "basic", "longer", "the-hash-itself"],
)
def test_a_missing_or_unknown_token_is_a_401_asking_for_a_bearer(
    api: TestClient, headers: dict[str, str]
) -> None:
    for answer in (
        api.get("/v1/whoami", headers=headers),
        api.post("/v1/jobs/0123456789abcdef/cancel", headers=headers),
        api.post("/v1/jobs", json=ONE_PROMPT, headers=headers),
    ):
        assert answer.status_code == 401, answer.text
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert answer.json()["error"]["code"] == "unauthorized"


def test_a_read_token_may_read_but_not_change_jobs(api: TestClient) -> None:
    assert _submit(api, READER) == 403
    job_id = api.post("/v1/jobs", json=ONE_PROMPT, headers=_bearer(SUBMITTER)).json()["id"]
    for action in ("cancel", "retry", "resume"):
        answer = api.post(f"/v1/jobs/{job_id}/{action}", headers=_bearer(READER))
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "forbidden"
        assert "submit" in answer.json()["error"]["message"]
    assert api.post(f"/v1/jobs/{job_id}/cancel", headers=_bearer(SUBMITTER)).json()["status"] == "cancelled"
    assert _submit(api, SUBMITTER) == 201 and _submit(api, BOTH) == 201


def test_the_job_id_is_not_looked_at_before_the_token(api: TestClient) -> None:
    """An unauthenticated caller learns nothing about which jobs exist: every id gets the same 401."""
    for job_id in ("0123456789abcdef", "abc"):
        assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 401


def test_no_cookie_is_set_or_taken_instead_of_a_token(api: TestClient) -> None:
    answers = [
        api.get("/v1/whoami", headers=_bearer(READER)),
        api.post("/v1/jobs", json=ONE_PROMPT, headers=_bearer(SUBMITTER)),
        api.get("/v1/whoami"),
    ]
    assert all("set-cookie" not in answer.headers for answer in answers)
    api.cookies.set("Authorization", f"Bearer {SUBMITTER}")
    api.cookies.set("token", SUBMITTER)
    assert api.get("/v1/whoami").status_code == 401


def test_an_api_without_tokens_is_open_with_both_scopes(tmp_path: Path) -> None:
    api = TestClient(create_app(embedded_settings(tmp_path), dispatcher=KeptChunks()))
    assert api.get("/v1/whoami").json() == {"name": None, "scopes": ["read", "submit"]}
    assert _submit(api, None) == 201
    assert api.get("/v1/whoami", headers=_bearer("anything")).status_code == 200


def test_the_token_is_kept_only_as_its_hash(home: Settings, tmp_path: Path) -> None:
    entry = token_entry("ci", "submit", SUBMITTER)
    assert entry == f"ci:submit:{hashlib.sha256(SUBMITTER.encode()).hexdigest()}"
    assert SUBMITTER not in entry
    app = create_app(home, dispatcher=KeptChunks())
    kept = json.dumps([vars(token) | {"scopes": sorted(token.scopes)} for token in app.state.tokens])
    assert all(token not in kept and token not in home.model_dump_json() for token in (READER, SUBMITTER))
    TestClient(app).post("/v1/jobs", json=ONE_PROMPT, headers=_bearer(SUBMITTER))
    database = (tmp_path / "ovis-batch.db").read_bytes()
    assert SUBMITTER.encode() not in database and READER.encode() not in database


def test_token_new_prints_a_token_once_and_the_entry_that_lets_it_in(tmp_path: Path) -> None:
    made = CliRunner().invoke(cli, ["token", "new", "--name", "nightly", "--scope", "read"])
    assert made.exit_code == 0, made.output
    token, entry = made.stdout.split()
    assert entry == token_entry("nightly", "read", token) and token not in entry
    again = CliRunner().invoke(cli, ["token", "new", "--name", "nightly", "--scope", "read"])
    assert again.stdout.split()[0] != token, "every token is new"

    api = TestClient(create_app(embedded_settings(tmp_path, api_tokens=[entry]), dispatcher=KeptChunks()))
    assert api.get("/v1/whoami", headers=_bearer(token)).json() == {"name": "nightly", "scopes": ["read"]}
    assert _submit(api, token) == 403

    refused = CliRunner().invoke(cli, ["token", "new", "--name", "x", "--scope", "admin"])
    assert refused.exit_code == 2 and "must be one of read, submit" in refused.output


def test_tokens_come_from_the_environment_as_a_comma_list_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = token_entry("a", "read", READER), token_entry("b", "submit", SUBMITTER)
    monkeypatch.setenv("OVIS_BATCH_API_TOKENS", f"{first}, {second}")
    assert [token.name for token in parse_tokens(Settings().api_tokens)] == ["a", "b"]
    monkeypatch.setenv("OVIS_BATCH_API_TOKENS", json.dumps([first, second]))
    assert [token.name for token in parse_tokens(Settings().api_tokens)] == ["a", "b"]


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("alice:submit:" + "0" * 63, "not name:scope:sha256hex"),
        ("alice:submit:" + "z" * 64, "not name:scope:sha256hex"),
        ("alice:submit", "not name:scope:sha256hex"),
        ("ali ce:submit:" + "0" * 64, "not name:scope:sha256hex"),
        ("alice:admin:" + "0" * 64, "unknown scope(s) admin"),
        ("alice:read+admin:" + "0" * 64, "unknown scope(s) admin"),
    ],
)
def test_a_malformed_entry_stops_the_api_at_start_naming_it(tmp_path: Path, entry: str, says: str) -> None:
    with pytest.raises(InvalidParameters, match=r"OVIS_BATCH_API_TOKENS") as refused:
        create_app(embedded_settings(tmp_path, api_tokens=[entry]))
    assert says in str(refused.value)
    assert "0" * 64 not in str(refused.value), "the message does not repeat the hash"


def test_two_tokens_may_not_share_a_name(tmp_path: Path) -> None:
    entries = [token_entry("a", "read", READER), token_entry("a", "submit", SUBMITTER)]
    with pytest.raises(InvalidParameters, match="two tokens are named 'a'"):
        parse_tokens(entries)


def test_an_open_api_is_served_on_loopback_only() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        check_bind(host, [])
    for host in ("0.0.0.0", "::", "192.168.1.20", "api.example.com", ""):
        with pytest.raises(InvalidParameters, match="OVIS_BATCH_API_TOKENS"):
            check_bind(host, [])
    check_bind("0.0.0.0", parse_tokens([token_entry("a", "read", READER)]))


def test_serve_refuses_an_open_api_on_every_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OVIS_BATCH_API_TOKENS", raising=False)
    monkeypatch.setenv("OVIS_BATCH_API_HOST", "0.0.0.0")
    from jobs.settings import get_settings

    get_settings.cache_clear()
    try:
        for args in (["serve"], ["serve", "--host", "10.1.2.3"]):
            refused = CliRunner().invoke(cli, args)
            assert refused.exit_code == 2, refused.output
            assert "refusing to serve the API" in refused.output and "ovis-batch token new" in refused.output
    finally:
        get_settings.cache_clear()
