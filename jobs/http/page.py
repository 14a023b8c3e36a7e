"""The jobs page: a list of jobs and a page per job, plain HTML, CSS and JavaScript served by the API itself.

The pages are static files; their script reads everything from the JSON API (`/v1/...`) with the token the
user pastes, kept in the tab's sessionStorage and sent as `Authorization: Bearer`. No cookie is set, so a
page of another site cannot act with the user's rights (no CSRF), and the HTML carries no job data, so it is
served without authentication. The Content-Security-Policy lets the pages load and run nothing but these
files: no inline script, nothing from another origin (thumbnails are fetched with the token and shown as
blob: URLs), so even a text that slipped through unescaped could not run.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from jobs.http.errors import ApiError

#: The folder of the page's files (package data).
STATIC = Path(str(files("jobs.http").joinpath("static")))
#: The files served under /static/ and their types: a fixed list, so no request names any other file.
ASSETS = {
    "page.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "jobs.js": "text/javascript; charset=utf-8",
    "job.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The HTML is the same for every job and user, but a new release changes it: always revalidate.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _html(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


@router.get("/")
def jobs_page() -> Response:
    """The list of jobs with their progress."""
    return _html("jobs.html")


@router.get("/jobs/{job_id}")
def job_page(job_id: str) -> Response:
    """One job's page; its script reads the job id from the address."""
    return _html("job.html")


@router.get("/static/{name}")
def asset(name: str) -> Response:
    """One of the page's own files (ASSETS)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ApiError(404, "not_found", f"no file {name!r} under /static/")
    return FileResponse(STATIC / name, media_type=media_type, headers=SECURITY_HEADERS)
