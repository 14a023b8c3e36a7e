"""Errors of the HTTP layer itself (authentication, request refusals that name a field or a line) and the one
shape of every error body the API answers with."""

from __future__ import annotations

from typing import Any


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
