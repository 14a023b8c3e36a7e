"""What a person at the terminal sees from every command: the consoles, and errors to act on as one line.

Shared by the producer commands (jobs.cli) and the worker commands (workers.cli), which compose one console
script.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kombu.exceptions
import sqlalchemy.exc
import typer
from rich.console import Console
from rich.markup import escape

from jobs.errors import OvisBatchError
from storage import StorageError

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    """Print `message` as one error line; return the exit (status 2) for the caller to raise."""
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(2)


def _missing_schema(exc: sqlalchemy.exc.DBAPIError) -> bool:
    """Whether the database answered that the project's tables do not exist (never migrated)."""
    return type(exc.orig).__name__ == "UndefinedTable" or "no such table" in str(exc.orig)


def guard(fn: Callable[[], Any]) -> Any:
    """Run `fn`; turn the errors a user can act on into one line and exit status 2."""
    try:
        return fn()
    except (OvisBatchError, StorageError, ValueError) as exc:
        raise fail(str(exc)) from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as exc:
        if _missing_schema(exc):
            raise fail(
                "the database has no ovis-batch tables yet: run `ovis-batch db upgrade` once (and after "
                "every upgrade of ovis-batch)"
            ) from None
        if isinstance(exc, sqlalchemy.exc.ProgrammingError):
            raise
        reason = str(exc.orig).strip().splitlines()[0]
        raise fail(f"cannot reach a service ({exc.__class__.__name__}): {reason}") from None
    except (kombu.exceptions.OperationalError, OSError) as exc:
        # A server that is down or refuses the credentials: say which, not the URL (it may hold a password).
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise fail(f"cannot reach a service ({exc.__class__.__name__}): {reason}") from None
