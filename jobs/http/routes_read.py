"""The endpoints that read (scope read): jobs listed, a job's status, its failed items, its results rows and
its items' outputs; and the health check, which needs no token.

A job's status reads its row (and its failed items, through the status index, when it has any), whatever
the number of its items. Lists of items are pages addressed by seq (jobs.item_pages), so every page costs
its own rows only, and results are streamed: a page of a hundred thousand rows is never held whole.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy.exc
from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from jobs.api import Client
from jobs.db import session_scope
from jobs.export import iter_rows
from jobs.export_rows import ExtraColumns
from jobs.http import outputs
from jobs.http.auth import Caller, require_read
from jobs.http.deps import client_of, job_id_of, job_status, settings_of
from jobs.http.errors import ApiError, error_responses
from jobs.item_pages import failed_items, results_range
from jobs.lifecycle import ItemStatus, JobKind, JobStatus
from jobs.progress import parse_since, report_json
from jobs.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["jobs"])

#: Jobs a list holds at most.
MAX_JOBS_LISTED = 500
#: Failed items a page holds at most.
MAX_FAILURES_PAGE = 1000
#: Results rows a page holds by default and at most (streamed: memory stays flat at any size).
RESULTS_PAGE = 1000
MAX_RESULTS_PAGE = 100_000
#: Rows sent per write of a streamed page: fewer, larger writes than one per row.
ROWS_PER_WRITE = 500
NDJSON = "application/x-ndjson"
#: Seconds a client may keep an output or thumbnail: a succeeded item's output never changes.
OUTPUT_MAX_AGE_S = 3600
#: The refusals of an endpoint about one job, and of the list.
JOB_REFUSALS = error_responses(401, 404, 422, 503)
LIST_REFUSALS = error_responses(401, 422, 503)


class Health(BaseModel):
    """`GET /v1/health`: whether the API and its database answer."""

    status: str = Field(description="`ok`, or `unavailable` when the database does not answer.")
    database: str = Field(description="`ok` or `down`.")


def _states(values: Sequence[str], known: type[ItemStatus] | type[JobStatus], field: str) -> list[str]:
    """States given as repeated parameters or comma lists (`status=failed,cancelled`), checked."""
    states = [part.strip() for value in values for part in value.split(",") if part.strip()]
    names = {state.value for state in known}
    for state in states:
        if state not in names:
            raise ApiError(
                422,
                "invalid_parameters",
                f"unknown state {state!r}; states: {', '.join(sorted(names))}",
                field=field,
            )
    return states


def _text(value: str, field: str) -> str:
    """Text given to a query, refused when it holds a NUL: PostgreSQL keeps none in a string."""
    if "\x00" in value:
        raise ApiError(422, "invalid_parameters", f"{field} must not contain a NUL character", field=field)
    return value


@router.get(
    "/health",
    tags=["health"],
    response_model=Health,
    responses={503: {"model": Health, "description": "The database does not answer (Retry-After)."}},
)
def health(settings: Settings = Depends(settings_of)) -> JSONResponse:
    """Whether the API and its database answer: 200 when both do, 503 when the database does not."""
    try:
        with session_scope(settings.resolved_database_url) as session:
            session.execute(select(1))
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        log.warning("health: the database does not answer: %s", exc)
        body = {"status": "unavailable", "database": "down"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ok", "database": "ok"})


@router.get("/jobs", responses=LIST_REFUSALS)
def list_jobs(
    _: Caller = Depends(require_read),
    client: Client = Depends(client_of),
    status: list[str] = Query([], description="Job states, repeated or comma-separated: `running,queued`."),
    kind: JobKind | None = Query(None),
    since: str | None = Query(None, description="Created since: `90m`, `12h`, `7d` ago, or an ISO date."),
    source: str | None = Query(None, max_length=1000, description="A part of the source URL or path."),
    limit: int = Query(50, ge=1, le=MAX_JOBS_LISTED),
) -> dict[str, Any]:
    """The newest jobs first, as status objects, filtered by state, kind, creation time and source."""
    states = _states(status, JobStatus, "status")
    created_since: datetime | None = None
    if since is not None:
        try:
            created_since = parse_since(since)
        except ValueError as exc:
            raise ApiError(422, "invalid_parameters", str(exc).removeprefix("--"), field="since") from None
    reports = client.list(
        status=states or None,
        kind=kind.value if kind else None,
        since=created_since,
        source=None if source is None else _text(source, "source"),
        limit=limit,
    )
    jobs = [
        report_json(report, client.errors_by_code(report.id) if report.failed else {}) for report in reports
    ]
    return {"jobs": jobs}


@router.get("/jobs/{job_id}", responses=JOB_REFUSALS)
def get_job(
    _: Caller = Depends(require_read),
    job_id: str = Depends(job_id_of),
    client: Client = Depends(client_of),
) -> dict[str, Any]:
    """The job's status object, as `ovis-batch status --json` prints it: counters, rate, ETA, errors by code,
    GPU-seconds. The id may be a unique prefix of at least 8 characters."""
    return job_status(client, job_id)


@router.get("/jobs/{job_id}/failures", responses=JOB_REFUSALS)
def get_failures(
    _: Caller = Depends(require_read),
    job_id: str = Depends(job_id_of),
    client: Client = Depends(client_of),
    code: list[str] = Query([], description="Only failures with these error codes (repeated)."),
    after: int | None = Query(None, ge=0, description="The `next` cursor of the page before."),
    limit: int = Query(50, ge=1, le=MAX_FAILURES_PAGE),
) -> dict[str, Any]:
    """The job's failed items in source order with their errors, a page at a time: `next` is the cursor of
    the following page, null on the last."""
    codes = [_text(part.strip(), "code") for value in code for part in value.split(",") if part.strip()]
    found, following = failed_items(client.db, job_id, codes=codes, after=after, limit=limit)
    return {"items": [item.as_dict() for item in found], "next": following}


@router.get(
    "/jobs/{job_id}/results",
    response_class=StreamingResponse,
    responses={
        200: {"content": {NDJSON: {}}, "description": "One results.jsonl row per line."},
        **JOB_REFUSALS,
    },
)
def get_results(
    _: Caller = Depends(require_read),
    job_id: str = Depends(job_id_of),
    client: Client = Depends(client_of),
    status: list[str] = Query([], description="Item states, repeated or comma-separated."),
    after: int | None = Query(None, ge=0, description="The X-Next-After of the page before."),
    limit: int = Query(RESULTS_PAGE, ge=1, le=MAX_RESULTS_PAGE),
) -> StreamingResponse:
    """The job's items as the rows of its results.jsonl, in source order, also while it runs; one page of
    `limit` rows, streamed. When more follow, `X-Next-After` holds the `after` of the next page and `Link`
    its URL (rel="next")."""
    states = _states(status, ItemStatus, "status")
    report = client.status(job_id)
    pages = results_range(client.db, job_id, states, after=after, limit=limit)
    headers: dict[str, str] = {}
    if pages is not None and pages.more:
        query = {"after": pages.through, "limit": limit} | ({"status": ",".join(states)} if states else {})
        headers["X-Next-After"] = str(pages.through)
        headers["Link"] = f'</v1/jobs/{quote(job_id)}/results?{urlencode(query)}>; rel="next"'
    if pages is None:
        return StreamingResponse(iter(()), media_type=NDJSON, headers=headers)
    rows = iter_rows(
        client.settings,
        job_id,
        states,
        extra=ExtraColumns(report.kind),
        after_seq=pages.after,
        through_seq=pages.through,
    )
    return StreamingResponse(_ndjson(rows), media_type=NDJSON, headers=headers)


def _ndjson(rows: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    """Rows as JSON lines, as results.jsonl writes them, a few hundred per write."""
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    lines: list[str] = []
    for row in rows:
        lines.append(dumps(row))
        if len(lines) == ROWS_PER_WRITE:
            yield ("\n".join(lines) + "\n").encode()
            lines.clear()
    if lines:
        yield ("\n".join(lines) + "\n").encode()


@router.get(
    "/jobs/{job_id}/items/{item_id:path}/output",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}, **JOB_REFUSALS},
)
def get_output(
    item_id: str,
    _: Caller = Depends(require_read),
    job_id: str = Depends(job_id_of),
    client: Client = Depends(client_of),
    thumb: int | None = Query(
        None,
        ge=outputs.THUMB_MIN,
        le=outputs.THUMB_MAX,
        description="A JPEG thumbnail no larger than this many pixels a side instead of the output.",
    ),
) -> Response:
    """An image item's output as stored (streamed, with its Content-Type), or `?thumb=N` a JPEG thumbnail.
    Caption jobs have no output files: their captions are in the results rows."""
    url = outputs.output_url(client.settings, client.status(job_id), _text(item_id, "item_id"))
    stream = outputs.open_output(client.settings, url)
    cache = {"Cache-Control": f"private, max-age={OUTPUT_MAX_AGE_S}"}
    if thumb is not None:
        data = outputs.thumbnail(client.settings, stream, thumb, url)
        return Response(data, media_type="image/jpeg", headers=cache)
    return StreamingResponse(
        outputs.stream_output(stream), media_type=outputs.content_type(url), headers=cache
    )
