"""The HTTP API as deployed: real `ovis-batch serve` processes on PostgreSQL, Redis and an S3 server, with a
real worker. Jobs submitted over HTTP run to the end; cancel, retry and resume act on them; an
Idempotency-Key holds across API processes racing on one database; and the server answers while a large
submission is in progress."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from jobs.http.auth import new_token, token_entry
from jobs.lifecycle import JobStatus
from tests.helpers import write_photos
from tests.plugins.services import free_port
from tests.plugins.workers import BIN, Stack, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

_START_TIMEOUT_S = 60.0
_PORT_TRIES = 3
SUBMITTER, READER = new_token(), new_token()


@dataclass
class ApiServer:
    """One `ovis-batch serve` process and its address."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def post(self, path: str, body: Any = None, *, token: str | None = SUBMITTER, **headers: str) -> Any:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.post(self.url + path, json=body, headers=headers, timeout=120)

    def get(self, path: str, *, token: str | None = READER) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return requests.get(self.url + path, headers=headers, timeout=30)

    def job(self, job_id: str) -> dict[str, Any]:
        answer = self.get(f"/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()
        return status

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/v1/whoami", headers={"Authorization": f"Bearer {READER}"}, timeout=2).ok
    except requests.RequestException:
        return False


def _serve(env: dict[str, str], log: Path) -> ApiServer:
    """Start `ovis-batch serve` on a free port (another when some process took it first)."""
    for _ in range(_PORT_TRIES):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [str(BIN / "ovis-batch"), "serve", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if _answers(url):
                return ApiServer(process, url, log)
            time.sleep(0.1)
        if process.poll() is None:
            process.kill()
        process.wait()
        if "address already in use" not in log.read_text(errors="replace").lower():
            break
    raise AssertionError(f"ovis-batch serve did not start:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def serve(stack: Stack, tmp_path: Path) -> Iterator[Callable[[], ApiServer]]:
    """Start API processes on the stack, with a submit and a read token; each is stopped at the end."""
    env = stack.env | {
        "OVIS_BATCH_API_TOKENS": ",".join(
            [token_entry("pipeline", "submit", SUBMITTER), token_entry("dashboard", "read", READER)]
        )
    }
    started: list[ApiServer] = []

    def start() -> ApiServer:
        started.append(_serve(env, tmp_path / f"api{len(started)}.log"))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def api(serve: Callable[[], ApiServer]) -> ApiServer:
    return serve()


def _worker_env(stack: Stack, **extra: str) -> dict[str, str]:
    # No reconciler: what happens to the jobs is what the test does.
    return stack.env | {"OVIS_BATCH_RECONCILE_INTERVAL_S": "0"} | extra


def _ended(api: ApiServer, job_id: str, timeout: float = 120) -> dict[str, Any]:
    wait_for(lambda: JobStatus(api.job(job_id)["status"]).final, timeout, "the job did not end")
    return api.job(job_id)


def _job_count(stack: Stack) -> int:
    return int(stack.rows("SELECT count(*) AS n FROM jobs")[0]["n"])


def test_a_job_submitted_over_http_runs_to_its_results(
    stack: Stack, api: ApiServer, start_worker: Callable[..., WorkerProcess]
) -> None:
    photos = write_photos(stack.home / "photos", count=6, size=48)
    items = [{"id": f"photo-{n}", "input": str(path)} for n, path in enumerate(photos)]
    answer = api.post("/v1/jobs", {"kind": "caption", "items": items, "params": {"prompt": "What is shown?"}})
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["id"]
    assert answer.headers["Location"] == f"/v1/jobs/{job_id}"
    start_worker(env=_worker_env(stack))

    job = _ended(api, job_id)
    assert (job["status"], job["succeeded"], job["failed"]) == ("succeeded", 6, 0)
    rows = [json.loads(line) for line in stack.written(f"outputs/{job_id}/results.jsonl").splitlines()]
    assert [row["id"] for row in rows] == [item["id"] for item in items]
    assert all(row["status"] == "succeeded" and row["output"] for row in rows)

    # Acting on a job that has ended changes nothing.
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "succeeded"
    retried = api.post(f"/v1/jobs/{job_id}/retry").json()
    assert retried["requeued"] == 0 and retried["job"]["succeeded"] == 6


def test_a_source_in_s3_is_submitted_by_its_url(
    stack: Stack, api: ApiServer, start_worker: Callable[..., WorkerProcess]
) -> None:
    prompts = "a red bicycle\na kite over a beach\na green door\n"
    stack.s3().put_object(Bucket=stack.bucket, Key="inputs/prompts.txt", Body=prompts.encode())
    source = f"s3://{stack.bucket}/inputs/prompts.txt"
    answer = api.post(
        "/v1/jobs", {"kind": "generate", "input": source, "params": {"width": 64, "height": 64}}
    )
    assert answer.status_code == 201, answer.text
    assert (answer.json()["source"], answer.json()["total"]) == (source, 3)

    outside = api.post("/v1/jobs", {"kind": "generate", "input": f"s3://{stack.bucket}/elsewhere/p.txt"})
    assert outside.status_code == 422 and outside.json()["error"]["code"] == "input_not_allowed"
    missing = api.post("/v1/jobs", {"kind": "generate", "input": f"s3://{stack.bucket}/inputs/none.txt"})
    assert missing.status_code == 422, missing.text
    assert missing.json()["error"]["code"] == "invalid_source" and missing.json()["error"]["field"] == "input"

    start_worker(env=_worker_env(stack))
    assert _ended(api, answer.json()["id"])["succeeded"] == 3
    assert _job_count(stack) == 1


def test_failed_items_are_retried_over_http_once_their_input_is_fixed(
    stack: Stack, api: ApiServer, start_worker: Callable[..., WorkerProcess]
) -> None:
    photos = write_photos(stack.home / "photos", count=3, size=48)
    broken = stack.home / "photos" / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    items = [{"input": str(path)} for path in [*photos, broken]]
    job_id = api.post("/v1/jobs", {"kind": "caption", "items": items}).json()["id"]
    start_worker(env=_worker_env(stack))

    job = _ended(api, job_id)
    assert (job["status"], job["succeeded"], job["failed"]) == ("partial", 3, 1)
    assert job["errors"] == {"invalid_image": 1}
    assert api.post(f"/v1/jobs/{job_id}/retry", token=READER).status_code == 403

    broken.write_bytes(photos[0].read_bytes())
    retried = api.post(f"/v1/jobs/{job_id}/retry", {"codes": ["invalid_image"]})
    assert retried.status_code == 200, retried.text
    assert retried.json()["requeued"] == 1 and retried.json()["job"]["failed"] == 0
    wait_for(lambda: api.job(job_id)["succeeded"] == 4, 120, "the retried item did not succeed")
    assert _ended(api, job_id)["status"] == "succeeded"


def test_a_cancelled_job_is_resumed_and_finishes(
    stack: Stack, api: ApiServer, start_worker: Callable[..., WorkerProcess]
) -> None:
    items = [{"id": f"p{n}", "prompt": f"a lighthouse, study {n}"} for n in range(12)]
    job_id = api.post("/v1/jobs", {"kind": "generate", "items": items, "params": {"width": 64, "height": 64}})
    job_id = job_id.json()["id"]

    cancelled = api.post(f"/v1/jobs/{job_id[:12]}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["cancelled"]) == ("cancelled", 12)

    resumed = api.post(f"/v1/jobs/{job_id}/resume", {"release_running": False})
    assert resumed.status_code == 200 and resumed.json()["requeued"] == 12
    # The worker starts once the job is resumed: this test is about the endpoints (a worker that takes the
    # chunk sent before the cancel while the resume lands is a separate race).
    start_worker(env=_worker_env(stack))
    job = _ended(api, job_id)
    assert (job["status"], job["succeeded"], job["cancelled"]) == ("succeeded", 12, 0)


def _race(servers: tuple[ApiServer, ...], body: dict[str, Any], key: str) -> list[Any]:
    """POST `body` with `key` to every server at once; their answers, in the servers' order."""
    start = threading.Barrier(len(servers))
    answers: list[Any] = [None] * len(servers)

    def post(index: int) -> None:
        start.wait(30)
        answers[index] = servers[index].post("/v1/jobs", body, **{"Idempotency-Key": key})

    threads = [threading.Thread(target=post, args=(index,)) for index in range(len(servers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return answers


def test_two_api_processes_racing_with_one_key_make_one_job(
    stack: Stack, serve: Callable[[], ApiServer]
) -> None:
    servers = (serve(), serve())
    body = {"kind": "generate", "items": [{"id": f"p{n}", "prompt": f"prompt {n}"} for n in range(400)]}
    for round_ in range(4):
        key = f"nightly-{round_}"
        answers = _race(servers, body, key)
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses in ([200, 201], [201, 409]), [answer.text for answer in answers]
        made = next(answer.json()["id"] for answer in answers if answer.status_code == 201)
        if statuses == [200, 201]:
            assert {answer.json()["id"] for answer in answers} == {made}
        replay = servers[round_ % 2].post("/v1/jobs", body, **{"Idempotency-Key": key})
        assert replay.status_code == 200 and replay.json()["id"] == made
        assert replay.headers["Idempotent-Replayed"] == "true"
    keys = stack.rows("SELECT key, job_id FROM idempotency_keys ORDER BY key")
    assert [row["key"] for row in keys] == [f"nightly-{n}" for n in range(4)]
    jobs = {row["id"] for row in stack.rows("SELECT id FROM jobs")}
    assert len(jobs) == 4 and {row["job_id"] for row in keys} == jobs


def test_the_api_answers_while_a_large_source_is_being_submitted(stack: Stack, api: ApiServer) -> None:
    prompts = stack.home / "prompts.txt"
    prompts.write_text("".join(f"a study of light, number {n}\n" for n in range(300_000)))
    submitted: list[Any] = []
    thread = threading.Thread(
        target=lambda: submitted.append(api.post("/v1/jobs", {"kind": "generate", "input": str(prompts)}))
    )
    thread.start()
    seen_submitting: list[dict[str, Any]] = []
    try:

        def answered_mid_submission() -> bool:
            rows = stack.rows("SELECT id FROM jobs")
            if rows and not submitted:
                status = api.job(rows[0]["id"])
                if status["submitting"] and status["total"] > 0:  # some items in, not all
                    seen_submitting.append(status)
            return bool(seen_submitting) or bool(submitted)

        wait_for(answered_mid_submission, 120, "the submission never started")
    finally:
        thread.join(300)
    assert seen_submitting, "no status was answered while the submission ran"
    assert 0 < seen_submitting[0]["total"] <= 300_000
    assert submitted[0].status_code == 201 and submitted[0].json()["total"] == 300_000
    assert not api.job(submitted[0].json()["id"])["submitting"]


def test_tokens_guard_the_real_server(api: ApiServer) -> None:
    body = {"kind": "generate", "items": [{"prompt": "x"}]}
    assert api.post("/v1/jobs", body, token=None).status_code == 401
    assert api.post("/v1/jobs", body, token="ovb_not-a-token").status_code == 401
    refused = api.post("/v1/jobs", body, token=READER)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert api.get("/v1/whoami").json() == {"name": "dashboard", "scopes": ["read"]}
    assert "set-cookie" not in {name.lower() for name in refused.headers}
