"""README's "HTTP API and jobs page" keeps up with the API: a curl example for every endpoint of the OpenAPI
document (jobs/http/openapi.json, itself checked against the code), and no example of an endpoint that is
not there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jobs.http.openapi import DOCUMENT

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## HTTP API and jobs page"
#: The path of a request in a curl command: after $API, ${API} or a scheme and host.
_URL = re.compile(r"""(?:\$\{?API\}?|https?://[^/\s"']+)(/v1/[^\s"'?]*)""")
#: curl options that make a request a POST.
_POST = re.compile(r"(?:^|\s)(?:-X\s*POST|--request\s+POST|--json|-d|--data(?:-\w+)?)(?:\s|$)")


def section(text: str) -> str:
    """The README's HTTP section: from its heading to the next heading of the same level."""
    start = text.index(SECTION)
    following = text.find("\n## ", start + len(SECTION))
    return text[start : following if following != -1 else len(text)]


def shell_blocks(text: str) -> list[str]:
    """The ```sh code blocks of `text`."""
    return re.findall(r"^```(?:sh|bash|console)\n(.*?)^```", text, flags=re.S | re.M)


def curl_commands(block: str) -> list[str]:
    """Each curl command of a shell block as one line: backslash continuations and quotes spanning lines
    joined."""
    commands: list[str] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.lstrip().startswith("#") or not re.search(r"(?:^|[\s(])curl\s", line):
            continue
        command = line
        while i < len(lines) and (command.endswith("\\") or command.count("'") % 2 == 1):
            command = command.removesuffix("\\") + " " + lines[i].strip()
            i += 1
        commands.append(command)
    return commands


def request_of(command: str) -> tuple[str, str]:
    """(method, path) that a curl command sends."""
    found = _URL.search(command)
    assert found, f"a curl example without an $API/v1/... URL: {command}"
    return ("POST" if _POST.search(command) else "GET", found.group(1))


def template(path: str) -> re.Pattern[str]:
    """An OpenAPI path with its {parameters} as one path segment each."""
    return re.compile(
        "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in re.split(r"({[^}]+})", path))
    )


def documented() -> list[tuple[str, str]]:
    """(method, path) of every operation of the checked-in OpenAPI document."""
    spec = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    return sorted(
        (method.upper(), path) for path, operations in spec["paths"].items() for method in operations
    )


def examples() -> list[tuple[str, str]]:
    """(method, path) of every curl example of the README's HTTP section."""
    text = section(README.read_text(encoding="utf-8"))
    return [request_of(command) for block in shell_blocks(text) for command in curl_commands(block)]


def matches(example: tuple[str, str], operation: tuple[str, str]) -> bool:
    """Whether an example sends a request to this operation."""
    return example[0] == operation[0] and template(operation[1]).fullmatch(example[1]) is not None


def test_every_endpoint_has_a_curl_example() -> None:
    shown = examples()
    operations = documented()
    assert len(operations) >= 10, "the OpenAPI document lists too few operations: is it the right file?"

    missing = [
        f"{method} {path}"
        for method, path in operations
        if not any(matches(e, (method, path)) for e in shown)
    ]
    assert not missing, f"README's {SECTION!r} has no curl example of: {missing}"


def test_every_curl_example_is_of_a_documented_endpoint() -> None:
    operations = documented()

    stale = [
        f"{method} {path}"
        for method, path in examples()
        if not any(matches((method, path), op) for op in operations)
    ]
    assert not stale, f"README's curl examples of endpoints the API does not have: {stale}"


@pytest.mark.parametrize(
    ("command", "request_"),
    [
        ('curl -s -H "$AUTH" $API/v1/jobs/$JOB', ("GET", "/v1/jobs/$JOB")),
        ('curl -s -H "$AUTH" -X POST $API/v1/jobs/$JOB/cancel', ("POST", "/v1/jobs/$JOB/cancel")),
        ("""curl -s $API/v1/jobs --json '{"kind": "caption"}'""", ("POST", "/v1/jobs")),
        ('curl -s "http://127.0.0.1:8000/v1/jobs?limit=5"', ("GET", "/v1/jobs")),
        (
            'curl -s -H "$AUTH" "${API}/v1/jobs/$JOB/results?limit=1000${after:+&after=$after}"',
            ("GET", "/v1/jobs/$JOB/results"),
        ),
    ],
)
def test_examples_are_read_as_a_shell_sends_them(command: str, request_: tuple[str, str]) -> None:
    assert request_of(command) == request_


def test_a_command_over_several_lines_is_one_request() -> None:
    block = """curl -s -i $API/v1/jobs --json '{
  "kind": "generate",
  "items": [{"prompt": "a"}]}'
curl -s $API/v1/jobs \\
  -X POST
# curl $API/v1/nothing in a comment
"""
    assert [request_of(command) for command in curl_commands(block)] == [
        ("POST", "/v1/jobs"),
        ("POST", "/v1/jobs"),
    ]
    assert not matches(("GET", "/v1/jobs/abc/cancel"), ("GET", "/v1/jobs/{job_id}"))
    assert matches(
        ("GET", "/v1/jobs/$JOB/items/fox/output"), ("GET", "/v1/jobs/{job_id}/items/{item_id}/output")
    )
