"""What the routers share: the producer's Client and settings the app was made with, a job named by its id or
a unique prefix of it, and the status object every job endpoint answers with."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from jobs.api import Client
from jobs.errors import InvalidParameters
from jobs.http.errors import ApiError
from jobs.http.sources import SourceSubmitter
from jobs.progress import report_json
from jobs.settings import Settings


def client_of(request: Request) -> Client:
    """The app's Client (one per app: its database engine and broker connections are pooled)."""
    client: Client = request.app.state.client
    return client


def sources_of(request: Request) -> SourceSubmitter:
    """Where the app submits sources: its pool of child processes (jobs/http/sources.py)."""
    sources: SourceSubmitter = request.app.state.sources
    return sources


def settings_of(request: Request) -> Settings:
    """The settings the app was made with."""
    settings: Settings = request.app.state.settings
    return settings


def job_id_of(request: Request, job_id: str) -> str:
    """The full id of the job a path names: the id, or a unique prefix of at least 8 characters; a 422
    naming `job_id` for anything else (not hex digits, too short, ambiguous)."""
    try:
        return client_of(request).resolve(job_id)
    except InvalidParameters as exc:
        raise ApiError(422, exc.error_code, str(exc), field="job_id") from None


def job_status(client: Client, job_id: str) -> dict[str, Any]:
    """The status object of a job: `ovis-batch status --json` (counters, rate, ETA, errors by code,
    GPU-seconds)."""
    report = client.status(job_id)
    return report_json(report, client.errors_by_code(job_id) if report.failed else {})
