"""Errors of the HTTP layer itself (authentication, request refusals that name a field or a line), what a
database error tells a client, and the one shape of every error body the API answers with."""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc
from pydantic import BaseModel, Field

from jobs.errors import DatabaseUnavailable


class ApiError(Exception):
    """A refusal with its HTTP status and the error body's parts."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        line: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.line = line
        self.headers = headers or {}


def error_body(
    code: str, message: str, *, field: str | None = None, line: int | None = None
) -> dict[str, Any]:
    """`{"error": {"code", "message", "field", "line"}}`: what every error answer of the API holds."""
    return {"error": {"code": code, "message": message, "field": field, "line": line}}


def database_refusal(exc: sqlalchemy.exc.DBAPIError) -> DatabaseUnavailable | None:
    """What a database error tells a client: the database does not answer, or has no tables yet (both
    503s); None for any other error, which is a bug (a 500)."""
    if type(exc.orig).__name__ == "UndefinedTable" or "no such table" in str(exc.orig):
        return DatabaseUnavailable("the database has no ovis-batch tables yet: run `ovis-batch db upgrade`")
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        reason = (str(exc.orig).strip().splitlines() or [""])[0]
        return DatabaseUnavailable(f"the database does not answer: {reason}")
    return None


class ErrorDetail(BaseModel):
    """What went wrong, as the CLI says it too."""

    code: str = Field(description="Stable error code: invalid_parameters, job_not_found, unauthorized, ...")
    message: str = Field(description="What was refused and why, for a person.")
    field: str | None = Field(description="The request's field at fault (dotted: `items.3.prompt`), or null.")
    line: int | None = Field(description="The source's line or row, or an inline item's index, or null.")


class ErrorBody(BaseModel):
    """The body of every answer that is not a 2xx."""

    error: ErrorDetail


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}
}
#: What each refusal means, as the OpenAPI document lists it.
_REFUSALS: dict[int, dict[str, Any]] = {
    401: {
        "description": "No bearer token, or one that is not valid (unauthorized).",
        "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    },
    403: {"description": "The token lacks the scope the endpoint needs (forbidden)."},
    404: {"description": "No such job (job_not_found), item or output file."},
    409: {
        "description": "The first request with this Idempotency-Key is still submitting "
        "(idempotency_in_progress): send it again in a moment.",
        "headers": _RETRY_AFTER,
    },
    422: {
        "description": "A refused request, naming its field (and line): invalid_parameters, invalid_source, "
        "input_not_allowed, idempotency_key_reused, ..."
    },
    503: {
        "description": "The database, the broker or storage does not answer: try again later.",
        "headers": _RETRY_AFTER,
    },
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route or router for these refusals, each with the error body's schema (a 422
    listed here replaces FastAPI's own validation error schema, which the API never answers with)."""
    return {status: {"model": ErrorBody, **_REFUSALS[status]} for status in statuses}
