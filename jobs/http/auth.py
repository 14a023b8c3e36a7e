"""Bearer tokens and their scopes.

Settings name each token as `name:scopes:sha256hex` (OVIS_BATCH_API_TOKENS): the secret itself is never
stored, only its SHA-256, so a leaked settings file or environment dump gives no way in. A request presents
`Authorization: Bearer <token>`; its hash is compared with every configured hash in constant time. Scopes are
`read` (status, lists, results, the page's data) and `submit` (submit, cancel, retry, resume), and `submit`
implies `read`. No cookie is ever set or read, so a browser never sends credentials on its own: no CSRF.

With no token configured the API is open, and `ovis-batch serve` listens on a loopback address only
(`check_bind`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobs.errors import InvalidParameters
from jobs.http.errors import ApiError

READ = "read"
SUBMIT = "submit"
#: Each scope and the scopes it grants.
SCOPES: dict[str, frozenset[str]] = {READ: frozenset({READ}), SUBMIT: frozenset({READ, SUBMIT})}
#: Prefix of the tokens `new_token` makes, so that a secret scanner can recognise one.
TOKEN_PREFIX = "ovb_"
_ENTRY = re.compile(r"(?P<name>[A-Za-z0-9._@-]{1,64}):(?P<scopes>[a-z+]+):(?P<digest>[0-9a-fA-F]{64})")


@dataclass(frozen=True)
class ApiToken:
    """One configured token: who it is, what it may do, and the SHA-256 of its secret."""

    name: str
    scopes: frozenset[str]
    digest: str


@dataclass(frozen=True)
class Caller:
    """Who made a request: a token's name (None on an open API) and the scopes it holds."""

    name: str | None
    scopes: frozenset[str]


#: The caller of an API that has no tokens configured.
ANYONE = Caller(name=None, scopes=frozenset(SCOPES))


def token_digest(token: str) -> str:
    """The SHA-256 hex digest of a token: what settings keep instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_entry(name: str, scope: str, token: str) -> str:
    """The OVIS_BATCH_API_TOKENS entry for `token`: `name:scope:sha256hex`."""
    entry = f"{name}:{scope}:{token_digest(token)}"
    parse_tokens([entry])  # the same rules as at start
    return entry


def parse_tokens(entries: Iterable[str]) -> list[ApiToken]:
    """The configured tokens; InvalidParameters naming the entry that is malformed or repeats a name."""
    tokens: list[ApiToken] = []
    for entry in entries:
        match = _ENTRY.fullmatch(entry.strip())
        if match is None:
            shown = entry.split(":")[0][:64]
            raise InvalidParameters(
                f"OVIS_BATCH_API_TOKENS: the entry of {shown!r} is not name:scope:sha256hex (a name of "
                "letters, digits and ._@-; scopes read or submit, joined by +; 64 hex digits); "
                "`ovis-batch token new` prints one"
            )
        names = match["scopes"].split("+")
        unknown = sorted(set(names) - set(SCOPES))
        if unknown:
            raise InvalidParameters(
                f"OVIS_BATCH_API_TOKENS: token {match['name']!r} has unknown scope(s) {', '.join(unknown)}; "
                f"scopes are {', '.join(SCOPES)}"
            )
        if any(token.name == match["name"] for token in tokens):
            raise InvalidParameters(f"OVIS_BATCH_API_TOKENS: two tokens are named {match['name']!r}")
        scopes = frozenset().union(*(SCOPES[name] for name in names))
        tokens.append(ApiToken(name=match["name"], scopes=scopes, digest=match["digest"].lower()))
    return tokens


def identify(tokens: list[ApiToken], presented: str | None) -> Caller | None:
    """The caller a presented token belongs to, or None. Every configured hash is compared, each in constant
    time, so the answer's timing says nothing about which one came close."""
    if not tokens:
        return ANYONE
    if not presented:
        return None
    digest = token_digest(presented)
    found: ApiToken | None = None
    for token in tokens:
        if hmac.compare_digest(token.digest, digest):
            found = token
    return Caller(name=found.name, scopes=found.scopes) if found is not None else None


def check_bind(host: str, tokens: list[ApiToken]) -> None:
    """Refuse to serve an open API (no tokens) on anything but a loopback address."""
    if tokens or is_loopback(host):
        return
    raise InvalidParameters(
        f"refusing to serve the API on {host}: no token is configured, so anyone who reaches it could "
        "submit and cancel jobs. Make a token with `ovis-batch token new` and set OVIS_BATCH_API_TOKENS, or "
        "serve on 127.0.0.1"
    )


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# auto_error=False: a missing header is answered by `_caller` in the API's own error shape.
_bearer = HTTPBearer(
    auto_error=False, description="A token from OVIS_BATCH_API_TOKENS (`ovis-batch token new`)"
)


def _caller(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    tokens: list[ApiToken] = request.app.state.tokens
    caller = identify(tokens, credentials.credentials if credentials is not None else None)
    if caller is None:
        message = "a bearer token is required" if credentials is None else "the bearer token is not valid"
        raise ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
    return caller


def _requiring(scope: str, caller: Caller) -> Caller:
    if scope not in caller.scopes:
        raise ApiError(403, "forbidden", f"the token {caller.name!r} lacks the {scope!r} scope")
    return caller


def require_read(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Caller:
    """Dependency of the endpoints that read: any valid token (or none on an open API)."""
    return _requiring(READ, _caller(request, credentials))


def require_submit(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Caller:
    """Dependency of the endpoints that change jobs: a token with the submit scope."""
    return _requiring(SUBMIT, _caller(request, credentials))
