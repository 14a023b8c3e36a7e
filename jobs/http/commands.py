"""`ovis-batch serve` and `ovis-batch token new`, registered by jobs.cli. The web framework and the server are
imported when `serve` runs, so that every other command starts without them."""

from __future__ import annotations

import logging

import typer

from jobs.settings import get_settings
from jobs.terminal import console, err, guard


def _plain_uvicorn_record(record: logging.LogRecord) -> bool:
    # Uvicorn attaches a terminal-coloured copy of some messages; the project's formats would print it.
    record.__dict__.pop("color_message", None)
    return True


token_app = typer.Typer(help="Bearer tokens of the HTTP API.", no_args_is_help=True)


def serve(
    host: str | None = typer.Option(
        None,
        help="Address to listen on (default: OVIS_BATCH_API_HOST, 127.0.0.1); anything but a loopback "
        "address needs OVIS_BATCH_API_TOKENS.",
    ),
    port: int | None = typer.Option(None, help="Port to listen on (default: OVIS_BATCH_API_PORT, 8000)."),
) -> None:
    """Serve the HTTP API and the jobs page (FastAPI on uvicorn)."""
    import uvicorn

    from jobs.http.app import create_app
    from jobs.http.auth import check_bind, parse_tokens
    from jobs.logs import configure_logging

    settings = get_settings()
    address = host or settings.api_host
    guard(lambda: check_bind(address, parse_tokens(settings.api_tokens)))
    configure_logging("INFO", settings.log_format)
    logging.getLogger("uvicorn.error").addFilter(_plain_uvicorn_record)
    app = guard(lambda: create_app(settings))
    # log_config=None: uvicorn's records go through the project's log handler and format.
    uvicorn.run(app, host=address, port=port or settings.api_port, log_config=None)


@token_app.command("new")
def token_new(
    name: str = typer.Option(..., "--name", help="Who the token is for (letters, digits and ._@-)."),
    scope: str = typer.Option(
        ..., "--scope", help="read (status, lists, results) or submit (also submit, cancel, retry, resume)."
    ),
) -> None:
    """Make a random token: print it once, and the OVIS_BATCH_API_TOKENS entry (its hash) to add."""
    from jobs.http.auth import SCOPES, new_token, token_entry

    if scope not in SCOPES:
        raise typer.BadParameter(f"must be one of {', '.join(SCOPES)}", param_hint="--scope")
    token = new_token()
    entry: str = guard(lambda: token_entry(name, scope, token))
    err.print("The token (shown once; give it to its user; it is not stored anywhere):", markup=False)
    print(token)
    err.print("Add this entry to OVIS_BATCH_API_TOKENS (comma-separated with the others):", markup=False)
    console.print(entry, markup=False, highlight=False, soft_wrap=True)
