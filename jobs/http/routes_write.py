"""The endpoints that change jobs (scope submit): submit, cancel, retry failed items, resume.

They are plain functions, which FastAPI runs on its thread pool: a submission reading a large source for
seconds keeps one thread busy while the server goes on answering every other request.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, ConfigDict, Field

from jobs.api import Client
from jobs.http.auth import Caller, require_submit
from jobs.http.deps import client_of, job_id_of, job_status

router = APIRouter(prefix="/v1", tags=["jobs"])


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


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    _: Caller = Depends(require_submit),
    job_id: str = Depends(job_id_of),
    client: Client = Depends(client_of),
) -> dict[str, Any]:
    """Cancel a job: queued items end cancelled now, running ones at their next micro-batch. Cancelling a job
    that has ended changes nothing."""
    client.cancel(job_id)
    return job_status(client, job_id)


@router.post("/jobs/{job_id}/retry")
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


@router.post("/jobs/{job_id}/resume")
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
