"""The HTTP side of notifications (jobs/notify.py): which URLs may be notified, how a body is signed and
checked, the headers of an attempt, one POST and what its answer means, and the wait before the next attempt.

A signature is `sha256=` and the hex HMAC-SHA256, under the secret, of `{timestamp}.{raw body}`, the timestamp
being the Unix seconds of the attempt (`X-Ovis-Batch-Timestamp`), as Stripe and Svix sign theirs: a receiver
checks the bytes it received before parsing them, and refuses an old timestamp (a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from jobs.errors import InvalidParameters
from jobs.version import package_version

EVENT = "job.ended"
SIGNATURE_HEADER = "X-Ovis-Batch-Signature"
TIMESTAMP_HEADER = "X-Ovis-Batch-Timestamp"
#: The same on every attempt of one notification: a receiver drops a notification it has seen by it.
DELIVERY_HEADER = "X-Ovis-Batch-Delivery"
EVENT_HEADER = "X-Ovis-Batch-Event"
ATTEMPT_HEADER = "X-Ovis-Batch-Attempt"
#: Longest wait between two attempts.
BACKOFF_CAP_S = 3600.0
#: How old a signed timestamp `verify` accepts by default.
SIGNATURE_TOLERANCE_S = 300.0
#: Characters of a failure kept for `status`.
ERROR_CHARS = 300
MAX_URL_CHARS = 2000


# -- URLs --------------------------------------------------------------------------------------------------
def check_notify_url(url: str, allowed_hosts: Sequence[str] = ()) -> str:
    """The URL stripped, or InvalidParameters: only http(s) URLs with a host, without credentials (sign with
    OVIS_BATCH_NOTIFY_SECRET instead: the URL is stored on the job and shown by `status`), and, when
    `allowed_hosts` (OVIS_BATCH_NOTIFY_ALLOWED_HOSTS) lists any, a host it allows: whoever may submit chooses
    where the server POSTs, which must not be an address inside its network."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise InvalidParameters(f"--notify-url {url[:80]!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidParameters(f"--notify-url must be an http:// or https:// URL, not {url[:80]!r}")
    if not host:
        raise InvalidParameters(f"--notify-url {url[:80]!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidParameters(
            "--notify-url may not carry credentials (user:password@): the URL is stored with the job; the "
            "receiver checks the signature made with OVIS_BATCH_NOTIFY_SECRET instead"
        )
    if len(text) > MAX_URL_CHARS or any(ord(char) < 33 for char in text):
        raise InvalidParameters(f"--notify-url must be at most {MAX_URL_CHARS} printable characters")
    if allowed_hosts and not host_allowed(host, allowed_hosts):
        raise InvalidParameters(
            f"--notify-url host {host[:80]!r} is not one OVIS_BATCH_NOTIFY_ALLOWED_HOSTS allows "
            f"({', '.join(allowed_hosts)})"
        )
    return text


def refused_host(url: str, allowed_hosts: Sequence[str]) -> Attempt | None:
    """The attempt refused before any request when `allowed_hosts` lists some and the URL's host is not one
    of them (a URL stored before the list was set, or under another list); None when it may be sent."""
    host = urlsplit(url).hostname or ""
    if not allowed_hosts or host_allowed(host, allowed_hosts):
        return None
    refusal = f"host {host[:80]!r} is not one OVIS_BATCH_NOTIFY_ALLOWED_HOSTS allows"
    return Attempt(error=refusal, refused=True)


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Whether `host` is one of `patterns`: a host name equal to it, or `*.domain` for any host under that
    domain (not the domain itself). Case and a final dot make no difference; an IP address matches only an
    entry that is the same address."""
    name = host.lower().rstrip(".")
    address = _ip_address(name)
    for pattern in patterns:
        wanted = pattern.strip().lower().rstrip(".")
        if address is not None:
            if address == _ip_address(wanted.strip("[]")):
                return True
        elif wanted.startswith("*."):
            domain = wanted[2:]
            if domain and name.endswith("." + domain):
                return True
        elif wanted and name == wanted:
            return True
    return False


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def shown_url(url: str) -> str:
    """The URL as `status` and logs show it: scheme, host and path, not the query (it may hold a token)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


# -- signing -----------------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of `{timestamp}.{body}`."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(
    secret: str,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
    at: float | None = None,
) -> bool:
    """The receiver's check: the signature is that of this raw body and timestamp, and the timestamp is at
    most `tolerance_s` seconds from now (a replayed old notification fails)."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if at is None else at) - stamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)


# -- an attempt ------------------------------------------------------------------------------------------
def request_headers(body: bytes, delivery_id: str, attempt: int, secret: str | None) -> dict[str, str]:
    """Headers of one attempt: signed at the time of sending when a secret is set."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"ovis-batch/{package_version()} (notifications)",
        EVENT_HEADER: EVENT,
        DELIVERY_HEADER: delivery_id,
        ATTEMPT_HEADER: str(attempt),
        TIMESTAMP_HEADER: str(timestamp),
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return headers


@dataclass(frozen=True)
class Attempt:
    """How one POST went: the answer's status, or why there was none."""

    status: int | None = None
    error: str | None = None
    #: Seconds the receiver asked to wait (Retry-After), if it did.
    retry_after: float | None = None
    #: Not sent at all, for good: the URL's host is no longer one the settings allow.
    refused: bool = False

    @property
    def delivered(self) -> bool:
        """A 2xx answer."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """No answer (network, timeout), 429 or 5xx: worth another attempt."""
        if self.refused:
            return False
        return self.status is None or self.status == 429 or self.status >= 500

    def describe(self) -> str:
        """`HTTP 503`, or the network error."""
        return f"HTTP {self.status}" if self.status is not None else str(self.error)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer like any other non-2xx: following it would send the body elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Attempt:
    """POST `body` once; the answer's status, or the network error (never raises for either)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return Attempt(status=response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return Attempt(status=exc.code, retry_after=_retry_after(exc.headers.get("Retry-After")))
    except urllib.error.URLError as exc:
        return Attempt(error=_brief(exc.reason if isinstance(exc.reason, BaseException) else exc))
    except (OSError, HTTPException) as exc:  # timeouts, resets, a connection closed without an answer
        return Attempt(error=_brief(exc))


def _brief(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc[:ERROR_CHARS]
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{exc.__class__.__name__}: {first}"[:ERROR_CHARS]


def backoff(attempts: int, base_s: float, retry_after: float | None = None) -> float:
    """Seconds between the `attempts`-th failed attempt and the next: base * 2**(attempts - 1), or what the
    receiver asked if longer, at most BACKOFF_CAP_S."""
    delay = base_s * 2 ** max(0, attempts - 1)
    return min(BACKOFF_CAP_S, max(delay, retry_after or 0.0))
