"""Submissions from a source run in child processes of the API (jobs/http/sources.py), on embedded SQLite and
the folder broker: the job and its chunks are made there, its refusals come back as the server's own, an
Idempotency-Key's job id is the one submitted, a child that dies is replaced, and the pool ends with the
app. The project's errors cross the process boundary by pickling, whole."""

from __future__ import annotations

import inspect
import multiprocessing
import os
import pickle
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from jobs import errors
from jobs.api import Client
from jobs.db import session_scope
from jobs.http.app import create_app
from jobs.http.errors import ApiError
from jobs.http.sources import ProcessSubmitter, SourceSubmission, SubmissionFailed, ThreadSubmitter
from jobs.lifecycle import JobKind
from jobs.models import IdempotencyKey
from jobs.settings import Settings
from jobs.submit import new_job_id
from tests.helpers import embedded_settings
from tests.plugins.workers import wait_for

PROMPTS = [f"a lighthouse, take {n}" for n in range(10)]


class KeptChunks:
    """A dispatcher that keeps the chunks: no worker runs them."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Nothing to do."""


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    settings = embedded_settings(tmp_path)
    (tmp_path / "prompts.txt").write_text("".join(f"{prompt}\n" for prompt in PROMPTS))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a fox"}\n{"prompt": "a kite"}\n{"prompt": \n')
    return settings


@pytest.fixture
def api(home: Settings) -> Iterator[TestClient]:
    """The API as `serve` makes it: no dispatcher given, so sources are submitted in child processes."""
    with TestClient(create_app(home), raise_server_exceptions=False) as client:
        yield client


def _children() -> set[int]:
    return {child.pid for child in multiprocessing.active_children() if child.pid is not None}


def _queued_chunks(settings: Settings) -> int:
    return sum(1 for path in (settings.home / "broker" / "in").iterdir() if path.suffix == ".msg")


# -- errors across the boundary ----------------------------------------------------------------------------
PROJECT_ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.OvisBatchError) and cls.__module__ == errors.__name__
]


@pytest.mark.parametrize("cls", PROJECT_ERRORS, ids=lambda cls: cls.__name__)
def test_every_project_error_survives_pickling_whole(cls: type[errors.OvisBatchError]) -> None:
    message = "/data/shots.jsonl line 12: 'prompt' must be text, not 42"
    copy = pickle.loads(pickle.dumps(cls(message)))

    assert type(copy) is cls
    assert (str(copy), copy.error_code, copy.transient) == (message, cls.error_code, cls.transient)


def test_a_submission_failure_survives_pickling() -> None:
    copy = pickle.loads(pickle.dumps(SubmissionFailed("submitting job f00 failed: KeyError")))
    assert type(copy) is SubmissionFailed and str(copy) == "submitting job f00 failed: KeyError"


# -- through the API ---------------------------------------------------------------------------------------
def test_a_source_is_submitted_in_a_child_process(api: TestClient, home: Settings) -> None:
    before = _children()
    answer = api.post("/v1/jobs", json={"kind": "generate", "input": str(home.home / "prompts.txt")})

    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert (job["total"], job["queued"], job["submitting"], job["source"]) == (
        10,
        10,
        False,
        str(home.home / "prompts.txt"),
    )
    assert answer.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert _children() - before, "no child process submitted it"
    rows = list(Client(home, KeptChunks()).iter_results(job["id"]))
    assert [row["prompt"] for row in rows] == PROMPTS
    assert _queued_chunks(home) == 3, "10 items in chunks of 4, published by the child"


def test_a_refusal_from_the_source_is_the_same_as_in_the_server(api: TestClient, home: Settings) -> None:
    in_thread = TestClient(create_app(home, dispatcher=KeptChunks()), raise_server_exceptions=False)
    for source, code, line in (("bad.jsonl", "invalid_source", 3), ("missing.jsonl", "invalid_source", None)):
        body = {"kind": "generate", "input": str(home.home / source)}
        answer = api.post("/v1/jobs", json=body)

        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["field"], error["line"]) == (code, "input", line)
        assert answer.json() == in_thread.post("/v1/jobs", json=body).json()
    assert Client(home, KeptChunks()).list() == [], "nothing is left of a refused submission"


def test_an_idempotency_key_names_the_job_the_child_submits(api: TestClient, home: Settings) -> None:
    body = {"kind": "generate", "input": str(home.home / "prompts.txt"), "priority": 3}
    first = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "nightly-7"})
    again = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "nightly-7"})

    assert (first.status_code, again.status_code, again.headers["Idempotent-Replayed"]) == (201, 200, "true")
    assert first.json()["id"] == again.json()["id"]
    with session_scope(home.resolved_database_url) as session:
        assert session.scalars(select(IdempotencyKey.job_id)).all() == [first.json()["id"]]
    assert [job.id for job in Client(home, KeptChunks()).list()] == [first.json()["id"]]


def test_a_refused_source_gives_its_idempotency_key_up(api: TestClient, home: Settings) -> None:
    bad = {"kind": "generate", "input": str(home.home / "bad.jsonl")}
    assert api.post("/v1/jobs", json=bad, headers={"Idempotency-Key": "k"}).status_code == 422
    (home.home / "bad.jsonl").write_text('{"prompt": "a fox"}\n')

    fixed = api.post("/v1/jobs", json=bad, headers={"Idempotency-Key": "k"})
    assert (fixed.status_code, fixed.json()["total"]) == (201, 1)


def test_a_child_that_dies_is_replaced(api: TestClient, home: Settings) -> None:
    body = {"kind": "generate", "input": str(home.home / "prompts.txt")}
    before = _children()
    assert api.post("/v1/jobs", json=body).status_code == 201
    started = _children() - before
    for pid in started:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not (_children() & started), 30, "the killed children are still listed")

    answer = api.post("/v1/jobs", json=body)
    assert answer.status_code == 201, answer.text
    assert len(Client(home, KeptChunks()).list()) == 2


def test_the_pool_ends_with_the_app(home: Settings) -> None:
    before = _children()
    body = {"kind": "generate", "input": str(home.home / "prompts.txt")}
    with TestClient(create_app(home)) as api:
        assert api.post("/v1/jobs", json=body).is_success
        assert _children() - before
    assert _children() - before == set(), "the app's submission processes outlived it"


# -- the submitters themselves -----------------------------------------------------------------------------
def test_a_closed_pool_takes_no_more_submissions(home: Settings) -> None:
    source = str(home.home / "prompts.txt")
    submitter = ProcessSubmitter(home, processes=1)
    submission = SourceSubmission(JobKind.GENERATE, source, job_id=new_job_id())
    assert submitter.submit(submission) == submission.job_id
    submitter.close()

    with pytest.raises(ApiError, match="stopping") as refused:
        submitter.submit(SourceSubmission(JobKind.GENERATE, source, job_id=new_job_id()))
    assert (refused.value.status, refused.value.headers) == (503, {"Retry-After": "5"})


def test_both_submitters_make_the_same_job(home: Settings) -> None:
    def items(job_id: str) -> list[Any]:
        return [(row["id"], row["prompt"]) for row in Client(home, KeptChunks()).iter_results(job_id)]

    options: dict[str, Any] = {"params": {"width": 512}, "priority": 4}
    source = str(home.home / "prompts.txt")
    submitter = ProcessSubmitter(home, processes=1)
    try:
        in_child = submitter.submit(SourceSubmission(JobKind.GENERATE, source, new_job_id(), **options))
    finally:
        submitter.close()
    here = ThreadSubmitter(Client(home, KeptChunks()))
    in_thread = here.submit(SourceSubmission(JobKind.GENERATE, source, new_job_id(), **options))

    assert items(in_child) == items(in_thread)
    reports = [Client(home, KeptChunks()).status(job_id) for job_id in (in_child, in_thread)]
    assert [(r.total, r.priority, r.source) for r in reports] == [(10, 4, source)] * 2
