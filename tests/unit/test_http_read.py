"""The read endpoints of the HTTP API on embedded SQLite: status, lists, failures and results pages,
outputs and thumbnails, the health check, and the refusals (unknown job, ambiguous id, bad parameters) a user
meets."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import event, update

from jobs.api import Client
from jobs.db import get_engine, session_scope
from jobs.export import iter_rows
from jobs.http.app import create_app
from jobs.http.auth import new_token, token_entry
from jobs.keys import image_output_key
from jobs.lifecycle import JobKind
from jobs.models import Item, Job
from jobs.progress import report_json
from jobs.settings import Settings
from jobs.state import cancel_items, claim_items, record_failures, record_successes
from jobs.submit import ItemSpec
from storage import open_store
from tests.helpers import embedded_settings, write_photos
from tests.plugins.services import free_port
from workers.embedded import EmbeddedRunner

ITEM_STATES = ["queued", "running", "succeeded", "failed", "cancelled"]


class RecordedChunks:
    """A dispatcher that records the chunks it is given: no worker runs them."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, int, int]] = []

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Record the chunk."""
        self.chunks.append((job_id, start, stop))


def _job(client: Client, size: int, *, kind: JobKind = JobKind.GENERATE, source: str = "") -> str:
    photo = ""
    if kind != JobKind.GENERATE:
        photo = str(write_photos(Path(client.settings.home) / "photos", count=1)[0])
    items = [ItemSpec(key=f"item{seq:03d}", source=photo, text=f"prompt {seq}") for seq in range(size)]
    return client.submit_items(kind, items, source=source)


def _settle(
    client: Client,
    job_id: str,
    *,
    succeeded: dict[int, str] | None = None,
    failed: dict[int, tuple[str, str]] | None = None,
    cancelled: list[int] | None = None,
    size: int,
) -> None:
    """Move items through the state functions as workers do: claimed, then succeeded, failed or cancelled;
    the others stay running."""
    with session_scope(client.db) as session:
        claim_items(
            session,
            job_id=job_id,
            start=0,
            stop=size,
            worker="w",
            lease_seconds=600,
            max_attempts=3,
            starting_below=size,
        )
        record_successes(session, job_id=job_id, outputs=succeeded or {})
        record_failures(session, job_id=job_id, failures=failed or {})
        if cancelled:
            cancel_items(session, job_id=job_id, seqs=cancelled)


def _with_id(client: Client, made: str, job_id: str) -> str:
    """Give job `made` the id `job_id` (ids are random: two sharing a prefix are made by hand)."""
    with session_scope(client.db) as session:
        session.execute(update(Item).where(Item.job_id == made).values(job_id=job_id))
        session.execute(update(Job).where(Job.id == made).values(id=job_id))
    return job_id


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    return embedded_settings(tmp_path)


@pytest.fixture
def client(home: Settings) -> Client:
    return Client(home, RecordedChunks())


@pytest.fixture
def api(home: Settings) -> TestClient:
    return TestClient(create_app(home, dispatcher=RecordedChunks()))


def _steady(status: dict[str, Any]) -> dict[str, Any]:
    """A status object without the figures that move while a job runs (rate and ETA: read at a moment)."""
    return {name: value for name, value in status.items() if name not in ("rate", "eta_s")}


def _error(answer: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code, error
    if field is not None:
        assert error["field"] == field, error
    return error


def test_status_is_what_status_json_prints_and_a_short_id_names_it(client: Client, api: TestClient) -> None:
    job_id = _job(client, 6)
    _settle(
        client,
        job_id,
        size=6,
        succeeded={0: "a", 1: "b"},
        failed={2: ("invalid_image", "truncated"), 3: ("invalid_image", "empty"), 4: ("poisoned", "gave up")},
    )
    expected = report_json(client.status(job_id), {"invalid_image": 2, "poisoned": 1})

    answer = api.get(f"/v1/jobs/{job_id}")
    assert answer.status_code == 200
    assert set(answer.json()) == set(expected)
    assert _steady(answer.json()) == _steady(json.loads(json.dumps(expected)))
    assert answer.json()["rate"] > 0 and answer.json()["eta_s"] > 0
    assert answer.json()["errors"] == {"invalid_image": 2, "poisoned": 1}
    assert (answer.json()["succeeded"], answer.json()["failed"], answer.json()["running"]) == (2, 3, 1)
    assert api.get(f"/v1/jobs/{job_id[:8].upper()}").json()["id"] == job_id


def test_status_of_a_job_without_failures_reads_no_item_row(client: Client, api: TestClient) -> None:
    job_id = _job(client, 50)
    _settle(client, job_id, size=50, succeeded={seq: "x" for seq in range(50)})
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = get_engine(client.db)
    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert api.get(f"/v1/jobs/{job_id}").json()["succeeded"] == 50
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert statements and not [s for s in statements if "items" in s.lower()], statements


def test_unknown_jobs_are_404_and_ambiguous_or_short_ids_422(client: Client, api: TestClient) -> None:
    first = _with_id(client, _job(client, 1), "abcdef01" + "0" * 24)
    _with_id(client, _job(client, 1), "abcdef01" + "1" * 24)
    for path in ("", "/failures", "/results", "/items/item000/output"):
        _error(api.get(f"/v1/jobs/{'f' * 32}{path}"), 404, "job_not_found")
        error = _error(api.get(f"/v1/jobs/abcdef01{path}"), 422, "invalid_parameters")
        assert "ambiguous" in error["message"] and first in error["message"]
        _error(api.get(f"/v1/jobs/abcd{path}"), 422, "invalid_parameters")


def test_jobs_are_listed_newest_first_and_filtered(client: Client, api: TestClient) -> None:
    first = _job(client, 2, source="s3://bucket/cats.jsonl")
    second = _job(client, 3, source="s3://bucket/dogs.jsonl")
    third = _job(client, 1, kind=JobKind.CAPTION, source="photos/")
    _settle(client, second, size=3, failed={0: ("invalid_image", "x"), 1: ("bad_input", "y")})

    def listed(query: str) -> list[str]:
        answer = api.get(f"/v1/jobs{query}")
        assert answer.status_code == 200, answer.text
        return [job["id"] for job in answer.json()["jobs"]]

    assert set(listed("")) == {first, second, third}
    assert listed("?kind=caption") == [third]
    assert listed("?source=dogs") == [second]
    assert set(listed("?status=queued")) == {first, third}
    assert (
        set(listed("?status=running,queued"))
        == set(listed("?status=running&status=queued"))
        == {
            first,
            second,
            third,
        }
    )
    assert len(listed("?limit=2")) == 2
    assert set(listed("?since=1h")) == {first, second, third}
    assert listed("?since=2999-01-01") == []
    jobs = {job["id"]: job for job in api.get("/v1/jobs").json()["jobs"]}
    assert jobs[second]["errors"] == {"invalid_image": 1, "bad_input": 1}
    assert _steady(jobs[second]) == _steady(api.get(f"/v1/jobs/{second}").json())


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=nope", "status"),
        ("kind=painting", "kind"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("limit=ten", "limit"),
    ],
)
def test_a_bad_list_parameter_is_422_naming_it(api: TestClient, query: str, field: str) -> None:
    _error(api.get(f"/v1/jobs?{query}"), 422, "invalid_parameters", field)


def test_failures_come_in_pages_with_examples_per_code(client: Client, api: TestClient) -> None:
    job_id = _job(client, 12)
    failures = {seq: ("invalid_image" if seq % 3 else "poisoned", f"why {seq}") for seq in range(1, 12, 2)}
    _settle(client, job_id, size=12, failed=failures, succeeded={0: "ok"})

    seen: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        query = "limit=2" + (f"&after={after}" if after is not None else "")
        page = api.get(f"/v1/jobs/{job_id[:10]}/failures?{query}").json()
        assert len(page["items"]) <= 2
        seen += page["items"]
        after = page["next"]
        if after is None:
            break
    assert [item["seq"] for item in seen] == sorted(failures)
    assert seen[0] == {
        "id": "item001",
        "seq": 1,
        "input": "",
        "prompt": "prompt 1",
        "error_code": "invalid_image",
        "error_message": "why 1",
        "attempts": 1,
    }
    examples = api.get(f"/v1/jobs/{job_id}/failures?code=poisoned&limit=10").json()
    assert [item["seq"] for item in examples["items"]] == [3, 9] and examples["next"] is None
    assert all(item["error_code"] == "poisoned" for item in examples["items"])
    both = api.get(f"/v1/jobs/{job_id}/failures?code=poisoned,invalid_image").json()["items"]
    assert len(both) == len(failures)
    assert api.get(f"/v1/jobs/{job_id}/failures?code=unknown").json() == {"items": [], "next": None}
    with session_scope(client.db) as session:
        session.execute(update(Item).where(Item.job_id == job_id, Item.seq == 5).values(error_code=None))
    unknown = api.get(f"/v1/jobs/{job_id}/failures?code=unknown").json()["items"]
    assert [(item["seq"], item["error_code"]) for item in unknown] == [(5, "unknown")]
    for query, field in (
        ("after=-1", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("after=x", "after"),
    ):
        _error(api.get(f"/v1/jobs/{job_id}/failures?{query}"), 422, "invalid_parameters", field)


#: A job of every item state, shared by the paging examples (hypothesis runs one test many times).
PAGED_SIZE = 23


@pytest.fixture(scope="module")
def paged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str, TestClient]]:
    home = embedded_settings(tmp_path_factory.mktemp("paged"))
    client = Client(home, RecordedChunks())
    job_id = _job(client, PAGED_SIZE)
    # Items 0-19 claimed; 20-22 stay queued.
    _settle(
        client,
        job_id,
        size=20,
        succeeded={seq: f"out {seq} ü" for seq in range(0, 20, 2)},
        failed={seq: ("invalid_image", f"bad {seq}") for seq in (1, 7, 13)},
        cancelled=[3, 9],
    )
    with TestClient(create_app(home, dispatcher=RecordedChunks())) as api:
        yield home, job_id, api


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(min_value=1, max_value=PAGED_SIZE + 2),
    states=st.lists(st.sampled_from(ITEM_STATES), unique=True, max_size=3),
)
def test_paging_through_results_yields_every_row_once_in_source_order(
    paged: tuple[Settings, str, TestClient], limit: int, states: list[str]
) -> None:
    home, job_id, api = paged
    expected = list(iter_rows(home, job_id, states))
    rows: list[dict[str, Any]] = []
    url: str | None = f"/v1/jobs/{job_id}/results?limit={limit}" + "".join(f"&status={s}" for s in states)
    pages = 0
    while url is not None:
        answer = api.get(url)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/x-ndjson"
        page = [json.loads(line) for line in answer.text.splitlines()]
        rows += page
        pages += 1
        following = answer.headers.get("x-next-after")
        if following is None:
            assert "link" not in answer.headers
            assert len(page) <= limit
            url = None
        else:
            assert len(page) == limit, "a page with more after it is full"
            link = answer.headers["link"]
            assert link.startswith("<") and link.endswith('>; rel="next"') and f"after={following}" in link
            url = link[1 : link.index(">")]
        assert pages <= PAGED_SIZE + 1
    assert rows == expected


def test_results_rows_are_those_of_results_jsonl(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    photos = tmp_path / "photos"
    write_photos(photos, count=3)
    (photos / "broken.jpg").write_bytes(b"not an image")
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(photos))
    api = TestClient(create_app(settings, dispatcher=RecordedChunks()))

    assert report.export_url is not None
    written = Path(report.export_url).read_text(encoding="utf-8")
    answer = api.get(f"/v1/jobs/{report.id}/results")
    assert answer.text == written
    failed = api.get(f"/v1/jobs/{report.id}/results?status=failed").text.splitlines()
    assert [json.loads(line)["id"] for line in failed] == ["broken.jpg"]
    assert api.get(f"/v1/jobs/{report.id}/results?after=3").text == ""


@pytest.mark.parametrize(
    ("query", "field"),
    [("status=done", "status"), ("after=-2", "after"), ("limit=0", "limit"), ("limit=100001", "limit")],
)
def test_a_bad_results_parameter_is_422_naming_it(
    client: Client, api: TestClient, query: str, field: str
) -> None:
    job_id = _job(client, 1)
    _error(api.get(f"/v1/jobs/{job_id}/results?{query}"), 422, "invalid_parameters", field)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/failures", "/v1/jobs/{id}/results"]),
    params=st.dictionaries(
        st.sampled_from(["status", "kind", "since", "source", "limit", "after", "code", "thumb"]),
        st.text(max_size=12),
        max_size=4,
    ),
)
def test_no_query_string_makes_a_read_endpoint_fail_with_5xx(
    paged: tuple[Settings, str, TestClient], path: str, params: dict[str, str]
) -> None:
    _, job_id, api = paged
    answer = api.get(path.format(id=job_id), params=params)
    assert answer.status_code in (200, 422), answer.text
    if answer.status_code == 422:
        assert answer.json()["error"]["field"] in params


def _png_with_alpha(width: int, height: int) -> bytes:
    image = Image.new("RGBA", (width, height), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (0, 0, width // 2, height))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_outputs_are_sent_as_stored_and_as_bounded_thumbnails(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse\na fox\n")
    report = EmbeddedRunner(settings).run(JobKind.GENERATE, str(prompts))
    api = TestClient(create_app(settings, dispatcher=RecordedChunks()))
    rows = [json.loads(line) for line in api.get(f"/v1/jobs/{report.id}/results").text.splitlines()]
    assert report.status == "succeeded" and len(rows) == 2

    answer = api.get(f"/v1/jobs/{report.id[:8]}/items/{rows[0]['id']}/output")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    assert answer.content == Path(rows[0]["output"]).read_bytes()
    stored = Image.open(io.BytesIO(answer.content))
    thumb = api.get(f"/v1/jobs/{report.id}/items/{rows[0]['id']}/output?thumb=16")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    small = Image.open(io.BytesIO(thumb.content))
    assert small.format == "JPEG" and max(small.size) == 16 and max(stored.size) > 16
    for size in ("15", "1025", "big", "-1"):
        _error(
            api.get(f"/v1/jobs/{report.id}/items/{rows[0]['id']}/output?thumb={size}"),
            422,
            "invalid_parameters",
            "thumb",
        )
    _error(api.get(f"/v1/jobs/{report.id}/items/nothing/output"), 404, "item_not_found", "item_id")

    os.remove(rows[1]["output"])
    _error(api.get(f"/v1/jobs/{report.id}/items/{rows[1]['id']}/output"), 404, "output_missing")


def test_an_item_id_with_slashes_and_a_transparent_output(client: Client, api: TestClient) -> None:
    job_id = client.submit_items(JobKind.GENERATE, [ItemSpec(key="shoes/red pair.png", text="shoes")])
    store = open_store(client.status(job_id).output_url)
    url = store.write(image_output_key(job_id, "shoes/red pair.png", "png"), _png_with_alpha(300, 100))
    _settle(client, job_id, size=1, succeeded={0: url})

    answer = api.get(f"/v1/jobs/{job_id}/items/shoes/red pair.png/output")
    assert answer.status_code == 200 and answer.content == Path(url).read_bytes()
    encoded = api.get(f"/v1/jobs/{job_id}/items/shoes%2Fred%20pair.png/output")
    assert encoded.content == answer.content
    small = api.get(f"/v1/jobs/{job_id}/items/shoes/red pair.png/output?thumb=60").content
    thumb = Image.open(io.BytesIO(small)).convert("RGB")
    assert thumb.size == (60, 20)
    red, green, blue = thumb.getpixel((5, 10))
    assert blue > 200 and red < 60 and green < 60, "the opaque half keeps its colour"
    assert min(thumb.getpixel((55, 10))) > 215, "the transparent half is white"


def test_outputs_that_are_not_image_files_in_place_are_404(
    client: Client, api: TestClient, tmp_path: Path
) -> None:
    caption = _job(client, 1, kind=JobKind.CAPTION)
    _settle(client, caption, size=1, succeeded={0: "a red shoe"})
    _error(api.get(f"/v1/jobs/{caption}/items/item000/output"), 404, "no_output_file")

    queued = _job(client, 1)
    error = _error(api.get(f"/v1/jobs/{queued}/items/item000/output"), 404, "no_output_file")
    assert "queued" in error["message"]

    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(_png_with_alpha(8, 8))
    outside = _job(client, 1)
    _settle(client, outside, size=1, succeeded={0: str(elsewhere)})
    _error(api.get(f"/v1/jobs/{outside}/items/item000/output"), 404, "no_output_file")


def test_an_output_too_large_for_the_image_limits_gets_no_thumbnail(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, max_image_pixels=100 * 100)
    client = Client(settings, RecordedChunks())
    job_id = _job(client, 1)
    store = open_store(client.status(job_id).output_url)
    url = store.write(image_output_key(job_id, "item000", "png"), _png_with_alpha(200, 200))
    _settle(client, job_id, size=1, succeeded={0: url})
    api = TestClient(create_app(settings, dispatcher=RecordedChunks()))

    assert api.get(f"/v1/jobs/{job_id}/items/item000/output").content == Path(url).read_bytes()
    _error(api.get(f"/v1/jobs/{job_id}/items/item000/output?thumb=64"), 422, "image_too_large")


def test_health_answers_without_a_token_and_says_when_the_database_is_down(tmp_path: Path) -> None:
    token = new_token()
    guarded = embedded_settings(tmp_path, api_tokens=[token_entry("reader", "read", token)])
    api = TestClient(create_app(guarded, dispatcher=RecordedChunks()))
    assert api.get("/v1/health").json() == {"status": "ok", "database": "ok"}
    _error(api.get("/v1/jobs"), 401, "unauthorized")
    assert api.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).json() == {"jobs": []}

    nowhere = embedded_settings(tmp_path, database_url=f"postgresql://ovis@127.0.0.1:{free_port()}/ovis")
    down = TestClient(create_app(nowhere, dispatcher=RecordedChunks()))
    answer = down.get("/v1/health")
    assert answer.status_code == 503 and answer.json() == {"status": "unavailable", "database": "down"}
    assert answer.headers["retry-after"]
    _error(down.get("/v1/jobs"), 503, "database_unavailable")
