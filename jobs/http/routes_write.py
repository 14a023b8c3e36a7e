"""The endpoints that change jobs (scope submit): submit, cancel, retry failed items, resume.

They are plain functions, which FastAPI runs on its thread pool. A submission from a source reads it in a
child process (jobs/http/sources.py), its thread waiting for the outcome, so that a source of a million items
takes no interpreter time from the requests answered meanwhile.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Body, Depends, Header, Response
from pydantic import BaseModel, ConfigDict, Field

from jobs import idempotency
from jobs.api import Client
from jobs.errors import BadInput
from jobs.http.auth import Caller, require_submit
from jobs.http.deps import client_of, job_id_of, job_status, settings_of, sources_of
from jobs.http.errors import ApiError, error_responses
from jobs.http.sources import SourceSubmission, SourceSubmitter
from jobs.http.submission import JobRequest, check_output, check_request, inline_items, source_refusal
from jobs.idempotency import KeyState
from jobs.items import ItemSpec
from jobs.settings import Settings
from jobs.submit import new_job_id

router = APIRouter(prefix="/v1", tags=["jobs"], responses=error_responses(401, 403, 422, 503))

#: An Idempotency-Key: 1 to 200 printable ASCII characters.
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,200}")
IdempotencyKeyHeader = Header(
    None,
    alias="Idempotency-Key",
    description="1-200 printable characters. The same key with the same request (same token) answers the "
    "job the first one made (200, Idempotent-Replayed: true) instead of making another; with another request "
    "it is refused (422 idempotency_key_reused); while the first is still submitting, 409 "
    "idempotency_in_progress.",
)


@router.post("/jobs", status_code=201, responses=error_responses(409))
def submit(
    response: Response,
    request: JobRequest,
    caller: Caller = Depends(require_submit),
    idempotency_key: str | None = IdempotencyKeyHeader,
    client: Client = Depends(client_of),
    sources: SourceSubmitter = Depends(sources_of),
    settings: Settings = Depends(settings_of),
) -> dict[str, Any]:
    """Submit a job from a source (`input`) or from items given inline (`items`); answers the job's status
    (201, Location: /v1/jobs/{id}). Everything is checked as the CLI checks it before anything is queued: a
    refusal is a 422 naming the field, and for an inline item its index as the line."""
    check_request(request, settings)
    items = inline_items(request, settings) if request.items is not None else None
    if idempotency_key is None:
        job_id = _submit(client, sources, request, items, settings, new_job_id())
    else:
        job_id = _submit_once(client, sources, request, items, settings, caller, idempotency_key, response)
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return job_status(client, job_id)


def _submit_once(
    client: Client,
    sources: SourceSubmitter,
    request: JobRequest,
    items: list[ItemSpec] | None,
    settings: Settings,
    caller: Caller,
    key: str,
    response: Response,
) -> str:
    """Submit under an Idempotency-Key: only the first request with the key makes a job."""
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            422,
            "invalid_parameters",
            "Idempotency-Key must be 1 to 200 printable characters",
            field="Idempotency-Key",
        )
    url, owner = settings.resolved_database_url, caller.name or ""
    digest = idempotency.request_hash(request.model_dump(mode="json"))
    claim = idempotency.claim(url, owner=owner, key=key, digest=digest, job_id=new_job_id())
    if claim.state is KeyState.REUSED:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was sent with another request; use a new key for a new job",
            field="Idempotency-Key",
        )
    if claim.state is KeyState.IN_PROGRESS:
        raise ApiError(
            409,
            "idempotency_in_progress",
            f"the first request with this Idempotency-Key is still submitting job {claim.job_id}; send it "
            "again in a moment",
            headers={"Retry-After": "1"},
        )
    if claim.state is KeyState.REPLAY:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
        return claim.job_id
    try:
        return _submit(client, sources, request, items, settings, claim.job_id)
    except BaseException:
        idempotency.release(url, owner=owner, key=key, job_id=claim.job_id)
        raise


def _submit(
    client: Client,
    sources: SourceSubmitter,
    request: JobRequest,
    items: list[ItemSpec] | None,
    settings: Settings,
    job_id: str,
) -> str:
    output_url = check_output(request.output, settings) if request.output is not None else None
    if items is not None:
        return client.submit_items(
            request.kind,
            items,
            source="(inline)",
            params=request.params,
            priority=request.priority,
            output_url=output_url,
            skip_existing=request.skip_existing,
            notify_url=request.notify_url,
            job_id=job_id,
        )
    assert request.input is not None
    submission = SourceSubmission(
        kind=request.kind,
        source=request.input,
        job_id=job_id,
        params=request.params,
        priority=request.priority,
        output_url=output_url,
        skip_existing=request.skip_existing,
        notify_url=request.notify_url,
    )
    try:
        return sources.submit(submission)  # in a child process of the server (jobs/http/sources.py)
    except BadInput as exc:  # the job-wide fields were checked: what is left is in the source
        raise source_refusal(exc) from None


class RetryRequest(BaseModel):
    """Which failed items to queue again."""

    model_config = ConfigDict(extra="forbid")

    #: Only failures with these error codes; empty: every failed item.
    codes: list[str] = Field(default_factory=list, max_length=100)


class ResumeRequest(BaseModel):
    """How far a resume reaches."""

    model_config = ConfigDict(extra="forbid")

    #: Also take back items leased to workers known to be gone.
    release_running: bool = False


@router.post("/jobs/{job_id}/cancel", responses=error_responses(404))
def cancel_job(
    _: Caller = Depends(require_submit),
    job_id: str = Depends(job_id_of),
    client: Client = Depends(client_of),
) -> dict[str, Any]:
    """Cancel a job: queued items end cancelled now, running ones at their next micro-batch. Cancelling a job
    that has ended changes nothing."""
    client.cancel(job_id)
    return job_status(client, job_id)


@router.post("/jobs/{job_id}/retry", responses=error_responses(404))
def retry_job(
    _: Caller = Depends(require_submit),
    body: RetryRequest | None = Body(None),
    job_id: str = Depends(job_id_of),
    client: Client = Depends(client_of),
) -> dict[str, Any]:
    """Queue the job's failed items (those with one of `codes`, if given) again as a new attempt;
    succeeded items are kept. Answers how many were queued and the job's status."""
    requeued = client.retry_failed(job_id, (body or RetryRequest()).codes)
    return {"requeued": requeued, "job": job_status(client, job_id)}


@router.post("/jobs/{job_id}/resume", responses=error_responses(404))
def resume_job(
    _: Caller = Depends(require_submit),
    body: ResumeRequest | None = Body(None),
    job_id: str = Depends(job_id_of),
    client: Client = Depends(client_of),
) -> dict[str, Any]:
    """Re-dispatch every item of the job that has not ended (queued, expired leases, cancelled); with
    `release_running`, items leased to workers known to be gone too."""
    requeued = client.resume(job_id, release_running=(body or ResumeRequest()).release_running)
    return {"requeued": requeued, "job": job_status(client, job_id)}
