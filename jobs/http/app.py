"""The FastAPI application: its routers, its state (settings, tokens, the producer's Client) and how every
error becomes a JSON answer.

Every refusal has one body, `{"error": {"code", "message", "field", "line"}}`, with the error codes of
jobs.errors, which the CLI shows too: bad input is a 422 (a missing job a 404), an unavailable database,
broker or storage a 503 with Retry-After. User input never ends in a 500; what does is a bug, logged with its
traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import kombu.exceptions
import sqlalchemy.exc
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import storage
from jobs import errors
from jobs.api import Client
from jobs.dispatch import Dispatcher
from jobs.http.auth import Caller, parse_tokens, require_read
from jobs.http.errors import ApiError, database_refusal, error_body, error_responses
from jobs.http.sources import ProcessSubmitter, SourceSubmitter, ThreadSubmitter
from jobs.settings import Settings
from jobs.version import package_version

#: Seconds a client is asked to wait before trying again when a service is down.
RETRY_AFTER_S = 5
#: Error codes of the refusals the framework makes before a route runs.
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
#: Where in a request pydantic found an error: these first parts of its location name the request's part.
_REQUEST_PARTS = ("body", "query", "path", "header")

DESCRIPTION = """Submit and watch ovis-batch jobs: the same operations, validation and error codes as the
`ovis-batch` CLI. Authenticate with `Authorization: Bearer <token>` (OVIS_BATCH_API_TOKENS); every error
answers `{"error": {"code", "message", "field", "line"}}`."""


def create_app(settings: Settings, *, dispatcher: Dispatcher | None = None) -> FastAPI:
    """The API for `settings`; chunks go to `dispatcher` (default: Celery, as the CLI sends them)."""
    app = FastAPI(title="ovis-batch", version=package_version(), description=DESCRIPTION, lifespan=_lifespan)
    app.state.settings = settings
    app.state.tokens = parse_tokens(settings.api_tokens)
    app.state.client = Client(settings, dispatcher)
    # Sources are read in child processes, which build their own dispatcher: one given here lives in this
    # process, so its submissions stay here too.
    sources = ProcessSubmitter(settings) if dispatcher is None else ThreadSubmitter(app.state.client)
    app.state.sources = sources
    _add_error_handlers(app)
    app.get("/v1/whoami", tags=["auth"], responses=error_responses(401))(whoami)

    from jobs.http import page, routes_read, routes_write

    app.include_router(routes_write.router)
    app.include_router(routes_read.router)
    app.include_router(page.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    sources: SourceSubmitter = app.state.sources
    await asyncio.to_thread(sources.close)  # waits for submissions in progress


def whoami(caller: Caller = Depends(require_read)) -> dict[str, Any]:
    """The token's name (null on an open API) and its scopes."""
    return {"name": caller.name, "scopes": sorted(caller.scopes)}


def _answer(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    line: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, field=field, line=line), status_code=status, headers=headers
    )


def _unavailable(code: str, message: str) -> JSONResponse:
    return _answer(503, code, message, headers={"Retry-After": str(RETRY_AFTER_S)})


def _project_error(exc: errors.OvisBatchError) -> JSONResponse:
    if isinstance(exc, errors.JobNotFound):
        return _answer(404, exc.error_code, str(exc))
    if isinstance(exc, errors.Transient):
        return _unavailable(exc.error_code, str(exc))
    # Bad input, and storage refusing a location the request named (its source or its output).
    return _answer(422, exc.error_code, str(exc))


def _storage_error(exc: storage.StorageError) -> JSONResponse:
    return _project_error(errors.from_storage(exc, role="source"))


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    issues = exc.errors()
    first: dict[str, Any] = dict(issues[0]) if issues else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":  # its location is a character position, not a field
        error = (first.get("ctx") or {}).get("error", "")
        message = f"the body is not valid JSON: {error}".rstrip(": ")
        return _answer(422, errors.InvalidParameters.error_code, message)
    loc = [str(part) for part in first.get("loc", ())]
    where = loc[1:] if loc and loc[0] in _REQUEST_PARTS else loc
    # An inline item's error names its index as the line, as a manifest's names its line.
    line = int(where[1]) if len(where) > 1 and where[0] == "items" and where[1].isdigit() else None
    field = ".".join(where) or None
    message = "; ".join(
        f"{'.'.join(str(p) for p in issue.get('loc', ())[1:]) or 'request'}: {issue.get('msg', '')}"
        for issue in issues[:5]
    )
    return _answer(422, errors.InvalidParameters.error_code, message, field=field, line=line)


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _answer(exc.status, exc.code, exc.message, field=exc.field, line=exc.line, headers=exc.headers)

    async def project_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.OvisBatchError)
        return _project_error(exc)

    async def storage_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, storage.StorageError)
        return _storage_error(exc)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation_error(exc)

    async def value_error(_: Request, exc: Exception) -> JSONResponse:
        # What the CLI shows as a user's error too (a URL that cannot be parsed, ...).
        return _answer(422, errors.InvalidParameters.error_code, str(exc))

    async def database_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, sqlalchemy.exc.DBAPIError)
        refusal = database_refusal(exc)
        if refusal is None:
            raise exc  # a bug: the 500 below
        return _unavailable(refusal.error_code, str(refusal))

    async def broker_error(_: Request, exc: Exception) -> JSONResponse:
        reason = (str(exc).strip().splitlines() or [""])[0]
        return _unavailable("broker_unavailable", f"the broker does not answer: {reason}")

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return _answer(exc.status_code, code, str(exc.detail), headers=exc.headers)

    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        return _answer(500, errors.INTERNAL_ERROR, "internal error; the server's log has the details")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(errors.OvisBatchError, project_error)
    app.add_exception_handler(storage.StorageError, storage_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ValueError, value_error)
    app.add_exception_handler(sqlalchemy.exc.OperationalError, database_error)
    app.add_exception_handler(sqlalchemy.exc.ProgrammingError, database_error)
    app.add_exception_handler(kombu.exceptions.OperationalError, broker_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # A bug: the same body shape; the server's log has the traceback.
    app.add_exception_handler(Exception, internal_error)
