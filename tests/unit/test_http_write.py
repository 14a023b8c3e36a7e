"""The endpoints of the HTTP API that change jobs, on embedded SQLite: submitting from a source or inline, the
CLI's checks answered as 422s naming the field and line, never a 500 for any body, Idempotency-Key, and
cancel, retry and resume."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import kombu.exceptions
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from jobs.api import Client
from jobs.db import session_scope
from jobs.http.app import create_app
from jobs.http.auth import new_token, token_entry
from jobs.http.submission import JobRequest
from jobs.idempotency import STALE_AFTER_S, request_hash
from jobs.lifecycle import JobKind
from jobs.models import IdempotencyKey, Item, Job
from jobs.settings import Settings
from jobs.state import claim_items, now, record_failures, record_successes
from tests.helpers import embedded_settings, write_photos


class RecordedChunks:
    """A dispatcher that records the chunks it is given: no worker runs them."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, str, int, int, int]] = []

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Record the chunk."""
        self.chunks.append((kind.value, job_id, start, stop, priority))


class HeldChunks(RecordedChunks):
    """A dispatcher whose first chunk waits until the test lets it go: a submission caught half-way."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self.go = threading.Event()

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Record the chunk, the first after the test said go."""
        self.reached.set()
        assert self.go.wait(60), "the test never let the submission go on"
        super().send_chunk(kind, job_id, start, stop, priority)


class BrokerDown:
    """A dispatcher whose broker does not answer."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Fail as kombu does when Redis is down."""
        raise kombu.exceptions.OperationalError("Error 111 connecting to localhost:6399. Connection refused.")


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    return embedded_settings(tmp_path)


@pytest.fixture
def chunks() -> RecordedChunks:
    return RecordedChunks()


@pytest.fixture
def api(home: Settings, chunks: RecordedChunks) -> Iterator[TestClient]:
    with TestClient(create_app(home, dispatcher=chunks), raise_server_exceptions=False) as client:
        yield client


def _jobs(settings: Settings) -> list[str]:
    with session_scope(settings.resolved_database_url) as session:
        return list(session.scalars(select(Job.id)))


def _items(settings: Settings, job_id: str) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    with session_scope(settings.resolved_database_url) as session:
        query = select(Item.key, Item.source, Item.text, Item.params).where(Item.job_id == job_id)
        return [tuple(row) for row in session.execute(query.order_by(Item.seq))]  # type: ignore[misc]


def _error(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code, error
    return error


# -- submitting ---------------------------------------------------------------------------------------------
def test_inline_items_make_a_job_with_its_status_and_location(
    api: TestClient, home: Settings, chunks: RecordedChunks
) -> None:
    photos = write_photos(Path(home.home) / "photos", count=3)
    body = {
        "kind": "caption",
        "items": [
            {"id": "front", "input": str(photos[0])},
            {"id": 7, "input": str(photos[1]), "prompt": "What breed is it?", "max_new_tokens": 40},
            {"input": str(photos[2]), "seed": 5},
        ],
        "params": {"prompt": "Describe the image.", "temperature": 0.0},
        "priority": 7,
    }
    answer = api.post("/v1/jobs", json=body)

    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert answer.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert (job["kind"], job["status"], job["priority"], job["total"], job["queued"]) == (
        "caption",
        "queued",
        7,
        3,
        3,
    )
    assert {"rate", "eta_s", "errors", "gpu_seconds_to_finish"} <= set(job)
    assert _items(home, job["id"]) == [
        ("front", str(photos[0]), "", None),
        ("7", str(photos[1]), "What breed is it?", {"max_new_tokens": 40}),
        (str(photos[2]), str(photos[2]), "", {"seed": 5}),
    ]
    assert chunks.chunks == [("caption", job["id"], 0, 3, 7)]


def test_a_source_makes_the_job_the_cli_would(
    api: TestClient, home: Settings, chunks: RecordedChunks
) -> None:
    prompts = Path(home.home) / "prompts.txt"
    prompts.write_text("a red bicycle\n\na blue kite\na green door\n")
    answer = api.post("/v1/jobs", json={"kind": "generate", "input": str(prompts), "params": {"width": 512}})

    assert answer.status_code == 201, answer.text
    job_id = answer.json()["id"]
    assert answer.json()["source"] == str(prompts) and answer.json()["total"] == 3
    assert [text for _, _, text, _ in _items(home, job_id)] == [
        "a red bicycle",
        "a blue kite",
        "a green door",
    ]
    cli_job = Client(home, RecordedChunks()).submit(JobKind.GENERATE, str(prompts), params={"width": 512})
    assert _items(home, cli_job) == _items(home, job_id)
    assert sum(stop - start for _, job, start, stop, _ in chunks.chunks if job == job_id) == 3


def test_inline_items_are_limited_by_the_setting(tmp_path: Path) -> None:
    api = TestClient(
        create_app(embedded_settings(tmp_path, api_max_inline_items=3), dispatcher=RecordedChunks())
    )
    items = [{"prompt": f"prompt {n}"} for n in range(4)]

    error = _error(api.post("/v1/jobs", json={"kind": "generate", "items": items}), 422, "invalid_parameters")
    assert error["field"] == "items" and "at most 3" in error["message"]
    assert "OVIS_BATCH_API_MAX_INLINE_ITEMS" in error["message"]
    assert api.post("/v1/jobs", json={"kind": "generate", "items": items[:3]}).status_code == 201
    assert len(_jobs(embedded_settings(tmp_path))) == 1


@pytest.mark.parametrize(
    ("item", "code", "field"),
    [
        ({"prompt": ""}, "invalid_parameters", "prompt"),
        ({"prompt": "   "}, "invalid_parameters", "prompt"),
        ({"prompt": "x" * 5000}, "invalid_parameters", "prompt"),
        ({"prompt": "a\u0000b"}, "invalid_parameters", "prompt"),
        ({"prompt": 42}, "invalid_parameters", "prompt"),
        ({"prompt": "ok", "seed": -1}, "invalid_parameters", "seed"),
        ({"prompt": "ok", "width": 500}, "invalid_parameters", "width"),
        ({"prompt": "ok", "width": 512, "steps": 0}, "invalid_parameters", "steps"),
        ({"prompt": "ok", "image_format": "gif"}, "invalid_parameters", "image_format"),
        ({"prompt": "ok", "max_new_tokens": 20}, "invalid_parameters", "max_new_tokens"),
        ({"prompt": "ok", "colour": "red"}, "invalid_parameters", "colour"),
        ({"prompt": "ok", "id": "x" * 513}, "invalid_parameters", "id"),
        ({"prompt": "ok", "id": True}, "invalid_parameters", "id"),
        ({"prompt": "ok", "id": 1.5}, "invalid_parameters", "id"),
        ({"prompt": "ok", "id": "first"}, "invalid_source", "id"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_a_bad_item_is_a_422_naming_its_line_and_field(
    api: TestClient, home: Settings, chunks: RecordedChunks, item: dict[str, Any], code: str, field: str
) -> None:
    items = [{"id": "first", "prompt": "a cat"}, {"id": "second", "prompt": "a dog"}, item]
    error = _error(api.post("/v1/jobs", json={"kind": "generate", "items": items}), 422, code)

    assert (error["line"], error["field"]) == (2, f"items.2.{field}"), error
    assert _jobs(home) == [] and chunks.chunks == [], "nothing is made of a refused submission"


def test_an_edit_item_needs_an_image_and_an_instruction(api: TestClient, home: Settings) -> None:
    photo = write_photos(Path(home.home) / "photos", count=1)[0]
    no_image = _error(
        api.post("/v1/jobs", json={"kind": "edit", "items": [{"prompt": "add a hat"}]}),
        422,
        "invalid_parameters",
    )
    assert (no_image["field"], no_image["line"]) == ("items.0.input", 0)
    no_prompt = _error(
        api.post("/v1/jobs", json={"kind": "edit", "items": [{"input": str(photo)}]}),
        422,
        "invalid_parameters",
    )
    assert (no_prompt["field"], no_prompt["line"]) == ("items.0.prompt", 0)
    relative = _error(
        api.post("/v1/jobs", json={"kind": "edit", "items": [{"input": "photo.jpg", "prompt": "x"}]}),
        422,
        "invalid_parameters",
    )
    assert relative["field"] == "items.0.input" and "absolute" in relative["message"]


@pytest.mark.parametrize(
    "input_url",
    ["/etc/hostname", "../outside.jpg", "s3://someone-elses-bucket/photo.jpg", "file:///etc/hostname"],
)
def test_an_input_outside_the_allowed_roots_is_refused(
    api: TestClient, home: Settings, input_url: str
) -> None:
    inside = write_photos(Path(home.home) / "photos", count=1)[0]
    absolute = str(Path(home.home) / input_url) if input_url.startswith("..") else input_url
    items = [{"input": str(inside)}, {"input": absolute}]

    error = _error(api.post("/v1/jobs", json={"kind": "caption", "items": items}), 422, "input_not_allowed")
    assert (error["field"], error["line"]) == ("items.1.input", 1)
    source = _error(
        api.post("/v1/jobs", json={"kind": "caption", "input": absolute}), 422, "input_not_allowed"
    )
    assert source["field"] == "input"
    assert _jobs(home) == []


def test_a_manifest_naming_an_input_outside_the_roots_is_refused(api: TestClient, home: Settings) -> None:
    manifest = Path(home.home) / "edits.jsonl"
    manifest.write_text('{"image": "/etc/hostname", "instruction": "make it blue"}\n')
    error = _error(
        api.post("/v1/jobs", json={"kind": "edit", "input": str(manifest)}), 422, "input_not_allowed"
    )
    assert error["field"] == "input"
    assert _jobs(home) == []


def test_a_bad_manifest_line_is_named(api: TestClient, home: Settings) -> None:
    manifest = Path(home.home) / "prompts.jsonl"
    manifest.write_text('{"prompt": "a cat"}\n{"prompt": "a dog"}\n{"text": 5}\n')
    error = _error(
        api.post("/v1/jobs", json={"kind": "generate", "input": str(manifest)}), 422, "invalid_source"
    )
    assert (error["field"], error["line"]) == ("input", 3)
    assert "line 3" in error["message"]


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"kind": "paint", "items": [{"prompt": "x"}]}, "invalid_parameters", "kind"),
        ({"kind": "generate"}, "invalid_parameters", None),
        ({"kind": "generate", "input": "p.txt", "items": [{"prompt": "x"}]}, "invalid_parameters", None),
        ({"kind": "generate", "items": []}, "invalid_source", "items"),
        ({"kind": "generate", "items": [{"prompt": "x"}], "priority": 10}, "invalid_parameters", "priority"),
        (
            {"kind": "generate", "items": [{"prompt": "x"}], "params": {"steps": 0}},
            "invalid_parameters",
            "params.steps",
        ),
        (
            {"kind": "generate", "items": [{"prompt": "x"}], "params": {"sharpness": 1}},
            "invalid_parameters",
            "params.sharpness",
        ),
        (
            {"kind": "caption", "items": [{"input": "/x.jpg"}], "params": {"prompt": ""}},
            "invalid_parameters",
            "params.prompt",
        ),
        (
            {"kind": "generate", "items": [{"prompt": "x"}], "notify_url": "ftp://example.com"},
            "invalid_parameters",
            "notify_url",
        ),
        (
            {"kind": "generate", "items": [{"prompt": "x"}], "output": "/etc/ovis"},
            "invalid_parameters",
            "output",
        ),
        (
            {"kind": "generate", "items": [{"prompt": "x"}], "output": "s3://UPPER/x"},
            "invalid_parameters",
            "output",
        ),
        ({"kind": "generate", "items": [{"prompt": "x"}], "colour": "red"}, "invalid_parameters", "colour"),
        ({"kind": "generate", "items": {"prompt": "x"}}, "invalid_parameters", "items"),
    ],
    ids=lambda value: str(value)[:50],
)
def test_a_bad_job_field_is_a_422_naming_it(
    api: TestClient, home: Settings, body: dict[str, Any], code: str, field: str | None
) -> None:
    error = _error(api.post("/v1/jobs", json=body), 422, code)
    assert error["field"] == field, error
    assert _jobs(home) == []
    assert not Path("/etc/ovis").exists()


def test_an_output_inside_the_storage_url_is_taken(api: TestClient, home: Settings) -> None:
    output = Path(home.resolved_storage_url) / "catalogue"
    body = {"kind": "generate", "items": [{"prompt": "x"}], "output": str(output)}
    answer = api.post("/v1/jobs", json=body)
    assert answer.status_code == 201, answer.text
    assert answer.json()["output_url"] == str(output)


#: Values of any JSON type, for fields that expect one of them.
ANY_VALUE = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
#: Requests near a valid one: a generate job's prompts, with parameters in and out of range.
NEAR_VALID = st.fixed_dictionaries(
    {
        "kind": st.just("generate"),
        "items": st.lists(
            st.fixed_dictionaries(
                {"prompt": st.text(min_size=1, max_size=20)},
                optional={
                    "id": st.one_of(st.text(max_size=10), st.integers(), st.booleans()),
                    "seed": st.integers(-5, 2**32),
                    "width": st.sampled_from([64, 512, 500, 4096]),
                    "image_format": st.sampled_from(["png", "jpg", "webp", "bmp"]),
                    "quality": ANY_VALUE,
                },
            ),
            min_size=1,
            max_size=4,
        ),
    },
    optional={
        "params": st.fixed_dictionaries({}, optional={"seed": st.integers(-1, 2**32), "steps": ANY_VALUE}),
        "priority": st.integers(-1, 10),
        "notify_url": st.sampled_from(["https://example.com/hook", "http://", "javascript:alert(1)", ""]),
        "skip_existing": st.booleans(),
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        NEAR_VALID,
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=20,
        ),
        st.fixed_dictionaries(
            {"kind": st.sampled_from(["caption", "generate", "edit", "x"])},
            optional={
                "input": st.one_of(st.text(max_size=30), st.integers(), st.none()),
                "items": st.lists(
                    st.dictionaries(
                        st.sampled_from(["id", "input", "prompt", "seed", "width", "steps", "quality", "zz"]),
                        ANY_VALUE,
                        max_size=5,
                    ),
                    max_size=4,
                ),
                "params": st.dictionaries(
                    st.sampled_from(["seed", "prompt", "width", "temperature", "max_pixels", "zz"]),
                    ANY_VALUE,
                    max_size=3,
                ),
                "priority": st.one_of(st.integers(), st.text(max_size=3)),
                "output": st.one_of(st.text(max_size=20), st.none()),
                "notify_url": st.one_of(st.text(max_size=20), st.none()),
                "skip_existing": st.one_of(st.booleans(), st.integers()),
            },
        ),
    ),
    # Header values as HTTP carries them: Latin-1 text without control characters.
    key=st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=210)),
)
def test_no_body_is_answered_with_a_server_error(api: TestClient, body: Any, key: str | None) -> None:
    headers: dict[str, Any] = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key.encode("latin-1")
    # Written here: NaN and Infinity as Python writes them, which a JSON client would refuse to send.
    answer = api.post("/v1/jobs", content=json.dumps(body).encode("utf-8", "surrogatepass"), headers=headers)
    assert answer.status_code in (200, 201, 409, 422), answer.text
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert set(error) == {"code", "message", "field", "line"} and error["code"] and error["message"]


# -- Idempotency-Key ----------------------------------------------------------------------------------------
BODY = {"kind": "generate", "items": [{"id": "lighthouse", "prompt": "a lighthouse at dusk"}]}


def test_the_same_key_and_request_answer_the_first_job(api: TestClient, home: Settings) -> None:
    first = api.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "nightly-2026-12-08"})
    again = api.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "nightly-2026-12-08"})

    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert _jobs(home) == [first.json()["id"]]
    other = api.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "nightly-2026-12-09"})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert api.post("/v1/jobs", json=BODY).json()["id"] not in (first.json()["id"], other.json()["id"])


def test_the_same_key_with_another_request_is_refused(api: TestClient, home: Settings) -> None:
    first = api.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k"})
    changed = BODY | {"priority": 3}
    error = _error(
        api.post("/v1/jobs", json=changed, headers={"Idempotency-Key": "k"}), 422, "idempotency_key_reused"
    )
    assert error["field"] == "Idempotency-Key"
    assert _jobs(home) == [first.json()["id"]]


def test_keys_of_different_tokens_never_meet(tmp_path: Path) -> None:
    alice, bob = new_token(), new_token()
    home = embedded_settings(
        tmp_path, api_tokens=[token_entry("alice", "submit", alice), token_entry("bob", "submit", bob)]
    )
    api = TestClient(create_app(home, dispatcher=RecordedChunks()))
    made = {
        api.post(
            "/v1/jobs", json=BODY, headers={"Idempotency-Key": "k", "Authorization": f"Bearer {token}"}
        ).json()["id"]
        for token in (alice, bob, alice)
    }
    assert len(made) == 2 and set(_jobs(home)) == made


def test_a_failed_submission_gives_its_key_up(tmp_path: Path) -> None:
    home = embedded_settings(tmp_path)
    down = TestClient(create_app(home, dispatcher=BrokerDown()))
    error = _error(
        down.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k"}), 503, "broker_unavailable"
    )
    assert "Connection refused" in error["message"]
    assert _jobs(home) == []

    up = TestClient(create_app(home, dispatcher=RecordedChunks()))
    answer = up.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k"})
    assert answer.status_code == 201 and _jobs(home) == [answer.json()["id"]]


@pytest.mark.parametrize("key", ["", "x" * 201, "tab\there", "é"])
def test_a_malformed_key_is_refused(api: TestClient, home: Settings, key: str) -> None:
    headers = {"Idempotency-Key": key.encode("utf-8")}
    error = _error(api.post("/v1/jobs", json=BODY, headers=headers), 422, "invalid_parameters")
    assert error["field"] == "Idempotency-Key"
    assert _jobs(home) == []


def test_a_retry_while_the_first_still_submits_is_told_to_wait(tmp_path: Path) -> None:
    home, held = embedded_settings(tmp_path), HeldChunks()
    api = TestClient(create_app(home, dispatcher=held))
    answers: list[Any] = []
    first = threading.Thread(
        target=lambda: answers.append(api.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k"}))
    )
    first.start()
    try:
        assert held.reached.wait(60)
        error = _error(
            api.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k"}), 409, "idempotency_in_progress"
        )
        assert _jobs(home)[0] in error["message"]
        assert (
            api.post("/v1/jobs", json=BODY | {"priority": 1}, headers={"Idempotency-Key": "k"}).status_code
            == 422
        )
    finally:
        held.go.set()
        first.join(60)
    assert answers[0].status_code == 201
    replay = api.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k"})
    assert replay.status_code == 200 and replay.json()["id"] == answers[0].json()["id"]
    assert _jobs(home) == [answers[0].json()["id"]]


def test_concurrent_duplicates_make_exactly_one_job(tmp_path: Path) -> None:
    home, chunks = embedded_settings(tmp_path), RecordedChunks()
    api = TestClient(create_app(home, dispatcher=chunks))
    start = threading.Barrier(6)
    statuses: list[int] = []

    def post() -> None:
        start.wait(30)
        statuses.append(api.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "once"}).status_code)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(statuses) == 6 and statuses.count(201) == 1, statuses
    assert set(statuses) <= {200, 201, 409}
    assert len(_jobs(home)) == 1 and {job for _, job, _, _, _ in chunks.chunks} == set(_jobs(home))


def test_a_key_whose_submission_died_before_its_job_is_taken_over(api: TestClient, home: Settings) -> None:
    """A key row naming a job that never came (its process died) holds the key for a while, then not."""
    digest = request_hash(JobRequest.model_validate(BODY).model_dump(mode="json"))
    with session_scope(home.resolved_database_url) as session:
        session.add(IdempotencyKey(owner="", key="k", request_hash=digest, job_id="f" * 32, created_at=now()))
    assert _error(
        api.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k"}), 409, "idempotency_in_progress"
    )
    with session_scope(home.resolved_database_url) as session:
        row = session.get(IdempotencyKey, ("", "k"))
        assert row is not None
        row.created_at = now() - timedelta(seconds=STALE_AFTER_S + 1)

    answer = api.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k"})
    assert answer.status_code == 201 and answer.json()["id"] != "f" * 32
    assert _jobs(home) == [answer.json()["id"]]
    assert (
        api.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k"}).json()["id"] == answer.json()["id"]
    )


# -- cancel, retry, resume ----------------------------------------------------------------------------------
def _submitted(api: TestClient, count: int) -> str:
    items = [{"id": f"p{n}", "prompt": f"prompt {n}"} for n in range(count)]
    answer = api.post("/v1/jobs", json={"kind": "generate", "items": items})
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def _run(home: Settings, job_id: str, size: int, *, succeeded: list[int], failed: dict[int, str]) -> None:
    """Claim every item as a worker does, then record outcomes; the rest stay running."""
    with session_scope(home.resolved_database_url) as session:
        claim_items(session, job_id=job_id, start=0, stop=size, worker="w", lease_seconds=600, max_attempts=3)
        record_successes(session, job_id=job_id, outputs={seq: f"out{seq}" for seq in succeeded})
        record_failures(session, job_id=job_id, failures={seq: (code, "bad") for seq, code in failed.items()})


def test_cancel_ends_a_queued_job_and_leaves_an_ended_one(api: TestClient, home: Settings) -> None:
    job_id = _submitted(api, 3)
    answer = api.post(f"/v1/jobs/{job_id[:10]}/cancel")
    assert answer.status_code == 200
    assert (answer.json()["id"], answer.json()["status"], answer.json()["cancelled"]) == (
        job_id,
        "cancelled",
        3,
    )
    again = api.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json() == answer.json()


def test_retry_queues_the_failed_items_again(api: TestClient, home: Settings, chunks: RecordedChunks) -> None:
    job_id = _submitted(api, 4)
    _run(home, job_id, 4, succeeded=[0], failed={1: "invalid_image", 2: "poisoned", 3: "invalid_image"})
    sent = len(chunks.chunks)

    only = api.post(f"/v1/jobs/{job_id}/retry", json={"codes": ["poisoned"]})
    assert only.status_code == 200, only.text
    assert (
        only.json()["requeued"] == 1
        and only.json()["job"]["failed"] == 2
        and only.json()["job"]["queued"] == 1
    )
    rest = api.post(f"/v1/jobs/{job_id}/retry")
    assert rest.json()["requeued"] == 2 and rest.json()["job"]["queued"] == 3
    assert rest.json()["job"]["succeeded"] == 1 and rest.json()["job"]["status"] != "succeeded"
    assert [(start, stop) for _, job, start, stop, _ in chunks.chunks[sent:]] == [(2, 3), (1, 4)]
    assert api.post(f"/v1/jobs/{job_id}/retry").json()["requeued"] == 0
    assert (
        _error(api.post(f"/v1/jobs/{job_id}/retry", json={"codes": "poisoned"}), 422, "invalid_parameters")[
            "field"
        ]
        == "codes"
    )


def test_resume_requeues_a_cancelled_job(api: TestClient, chunks: RecordedChunks) -> None:
    job_id = _submitted(api, 3)
    api.post(f"/v1/jobs/{job_id}/cancel")
    sent = len(chunks.chunks)

    answer = api.post(f"/v1/jobs/{job_id}/resume", json={"release_running": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["requeued"] == 3
    assert (answer.json()["job"]["queued"], answer.json()["job"]["cancelled"]) == (3, 0)
    assert answer.json()["job"]["status"] not in ("cancelled", "succeeded", "failed")
    assert [(start, stop) for _, _, start, stop, _ in chunks.chunks[sent:]] == [(0, 3)]


def test_resume_takes_running_items_back_only_when_asked(api: TestClient, home: Settings) -> None:
    job_id = _submitted(api, 2)
    _run(home, job_id, 2, succeeded=[], failed={})
    assert api.post(f"/v1/jobs/{job_id}/resume").json()["requeued"] == 2, (
        "still leased: dispatched, not released"
    )
    assert api.post(f"/v1/jobs/{job_id}/resume").json()["job"]["running"] == 2
    released = api.post(f"/v1/jobs/{job_id}/resume", json={"release_running": True}).json()
    assert (released["job"]["running"], released["job"]["queued"]) == (0, 2)


@pytest.mark.parametrize("action", ["cancel", "retry", "resume"])
def test_an_unknown_or_ambiguous_job_is_named(api: TestClient, action: str) -> None:
    missing = _error(api.post(f"/v1/jobs/0123456789abcdef/{action}"), 404, "job_not_found")
    assert "0123456789abcdef" in missing["message"]
    assert _error(api.post(f"/v1/jobs/0123/{action}"), 422, "invalid_parameters")


def test_the_database_being_down_is_a_503_to_retry(tmp_path: Path) -> None:
    home = embedded_settings(tmp_path, database_url="postgresql://ovis:secret@127.0.0.1:1/none")
    api = TestClient(create_app(home, dispatcher=RecordedChunks()))
    for answer in (api.post("/v1/jobs", json=BODY), api.post("/v1/jobs/0123456789abcdef/cancel")):
        error = _error(answer, 503, "database_unavailable")
        assert int(answer.headers["Retry-After"]) > 0 and "secret" not in error["message"]
