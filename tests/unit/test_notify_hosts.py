"""OVIS_BATCH_NOTIFY_ALLOWED_HOSTS: which hosts a notification URL may name, checked alike for the CLI, the
Python API and the HTTP API, so that whoever may submit cannot have the server POST inside its network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from jobs import cli
from jobs.api import Client
from jobs.errors import InvalidParameters
from jobs.http.app import create_app
from jobs.lifecycle import JobKind
from jobs.settings import Settings
from jobs.webhook import check_notify_url, host_allowed
from tests.helpers import embedded_settings

ALLOWED = ["hooks.example.com", "*.receivers.example.org"]
INTERNAL = [
    "http://169.254.169.254/latest/meta-data/",
    "http://localhost:8080/hook",
    "http://127.0.0.1/hook",
    "http://10.0.0.7/hook",
    "http://[::1]:9000/hook",
    "http://redis:6379/",
    "https://example.com/hook",
    "https://receivers.example.org/hook",
    "https://hooks.example.com.evil.net/hook",
    "https://evilhooks.example.com/hook",
    "https://hooks.example.com%2eevil.net/hook",
]


class KeptChunks:
    """A dispatcher that keeps the chunks: no worker runs them."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Nothing to do."""


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("hooks.example.com", True),
        ("HOOKS.Example.COM", True),
        ("hooks.example.com.", True),
        ("a.receivers.example.org", True),
        ("b.a.receivers.example.org", True),
        ("receivers.example.org", False),
        ("xreceivers.example.org", False),
        ("example.com", False),
        ("hooks.example.com.evil.net", False),
        ("169.254.169.254", False),
        ("localhost", False),
    ],
)
def test_a_host_is_allowed_by_its_name_or_a_domain_pattern(host: str, allowed: bool) -> None:
    assert host_allowed(host, ALLOWED) is allowed


def test_an_ip_address_is_allowed_only_when_listed_itself() -> None:
    assert host_allowed("192.0.2.10", ["192.0.2.10"])
    assert not host_allowed("192.0.2.10", ["*.0.2.10", "192.0.2.1"])


@pytest.mark.parametrize("url", INTERNAL)
def test_a_url_whose_host_is_not_allowed_is_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(InvalidParameters, match="OVIS_BATCH_NOTIFY_ALLOWED_HOSTS"):
        check_notify_url(url, ALLOWED)
    assert check_notify_url(url) == url, "with no list, any host is taken, as before the setting"


def test_urls_of_allowed_hosts_are_taken() -> None:
    assert check_notify_url(" https://hooks.example.com:8443/ovis?t=1 ", ALLOWED) == (
        "https://hooks.example.com:8443/ovis?t=1"
    )
    assert check_notify_url("http://eu.receivers.example.org/hook", ALLOWED)


def test_the_setting_reads_a_comma_list_or_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVIS_BATCH_NOTIFY_ALLOWED_HOSTS", " hooks.example.com , *.receivers.example.org ")
    assert Settings().notify_allowed_hosts == ALLOWED
    monkeypatch.setenv("OVIS_BATCH_NOTIFY_ALLOWED_HOSTS", '["hooks.example.com"]')
    assert Settings().notify_allowed_hosts == ["hooks.example.com"]
    monkeypatch.delenv("OVIS_BATCH_NOTIFY_ALLOWED_HOSTS")
    assert Settings().notify_allowed_hosts == []


@pytest.fixture
def guarded(tmp_path: Path) -> Settings:
    (tmp_path / "prompts.txt").write_text("a fox\n")
    return embedded_settings(tmp_path, notify_allowed_hosts=ALLOWED)


def test_the_python_api_refuses_a_host_not_allowed_given_or_by_default(guarded: Settings) -> None:
    prompts = str(guarded.home / "prompts.txt")
    client = Client(guarded, KeptChunks())
    with pytest.raises(InvalidParameters, match=re.escape("'169.254.169.254' is not one")):
        client.submit(JobKind.GENERATE, prompts, notify_url="http://169.254.169.254/")
    with pytest.raises(InvalidParameters, match="'localhost' is not one"):
        client.submit_items(JobKind.GENERATE, [], notify_url="http://localhost/hook")
    by_default = Client(guarded.model_copy(update={"notify_url": "http://10.0.0.7/"}), KeptChunks())
    with pytest.raises(InvalidParameters, match=re.escape("'10.0.0.7' is not one")):
        by_default.submit(JobKind.GENERATE, prompts)
    assert client.list() == [], "nothing was submitted"

    job_id = client.submit(JobKind.GENERATE, prompts, notify_url="https://hooks.example.com/ovis")
    assert client.status(job_id).notification is not None


def test_the_cli_refuses_a_host_not_allowed(guarded: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "get_settings", lambda: guarded)
    prompts = str(guarded.home / "prompts.txt")
    result = CliRunner().invoke(
        cli.app, ["submit", "generate", "--input", prompts, "--notify-url", "http://169.254.169.254/"]
    )

    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "OVIS_BATCH_NOTIFY_ALLOWED_HOSTS" in line
    assert Client(guarded, KeptChunks()).list() == []


def test_the_http_api_refuses_a_host_not_allowed_naming_the_field(guarded: Settings) -> None:
    api = TestClient(create_app(guarded, dispatcher=KeptChunks()), raise_server_exceptions=False)
    for body in (
        {"kind": "generate", "items": [{"prompt": "a fox"}]},
        {"kind": "generate", "input": str(guarded.home / "prompts.txt")},
    ):
        answer = api.post("/v1/jobs", json=body | {"notify_url": "http://127.0.0.1:6379/"})
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["field"]) == ("invalid_parameters", "notify_url")
        assert "OVIS_BATCH_NOTIFY_ALLOWED_HOSTS" in error["message"]
        taken = api.post("/v1/jobs", json=body | {"notify_url": "https://a.receivers.example.org/hook"})
        assert taken.status_code == 201, taken.text
    assert len(Client(guarded, KeptChunks()).list()) == 2


def test_an_ipv6_address_is_the_same_however_it_is_written() -> None:
    assert host_allowed("::1", ["[0:0:0:0:0:0:0:1]"])
    assert check_notify_url("http://[::1]:9000/hook", ["0:0::1"])
    assert not host_allowed("::1", ["*.1", "::2"])
