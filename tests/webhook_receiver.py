"""A webhook receiver for tests: a real HTTP server on 127.0.0.1, in a thread, that checks each notification's
signature the way README (Notifications) tells a receiver to, written here independently of jobs.notify."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Answer:
    """What the receiver answers one request: a status and headers."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Received:
    """One request as the receiver got it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: Whether the signature is that of the raw body and timestamp under the secret (None: no secret).
    signed: bool | None

    def json(self) -> Any:
        """The body, parsed."""
        return json.loads(self.body)


def valid_signature(
    secret: str, body: bytes, timestamp: str, signature: str, tolerance_s: float = 300
) -> bool:
    """README's check: HMAC-SHA256 of `{timestamp}.{body}` under the secret, hex, after `sha256=`, in constant
    time, and a timestamp within five minutes."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={expected}", signature)


class Receiver:
    """Answers the n-th request with the n-th of `answers` (the last one for every request after), keeps
    every request, and checks its signature under `secret`."""

    def __init__(self, answers: Sequence[Answer | int] = (200,), secret: str | None = None) -> None:
        self.answers = [a if isinstance(a, Answer) else Answer(a) for a in answers]
        self.secret = secret
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                signed = None
                if receiver.secret is not None:
                    signed = valid_signature(
                        receiver.secret,
                        body,
                        headers.get("x-ovis-batch-timestamp", ""),
                        headers.get("x-ovis-batch-signature", ""),
                    )
                with receiver._lock:
                    receiver.received.append(Received("POST", self.path, headers, body, signed))
                    answer = receiver.answers[min(len(receiver.received), len(receiver.answers)) - 1]
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                with receiver._lock:
                    receiver.received.append(
                        Received("GET", self.path, dict(self.headers.items()), b"", None)
                    )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads `received`."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/ovis"

    def then(self, answer: Answer | int) -> None:
        """Answer every request from now on with `answer`."""
        with self._lock:
            count = len(self.received)
            kept = [self.answers[min(n, len(self.answers) - 1)] for n in range(count)]
            self.answers = [*kept, answer if isinstance(answer, Answer) else Answer(answer)]

    def posts(self) -> list[Received]:
        """The POSTs received so far."""
        with self._lock:
            return [request for request in self.received if request.method == "POST"]


@contextmanager
def receiving(answers: Sequence[Answer | int] = (200,), secret: str | None = None) -> Iterator[Receiver]:
    """A receiver serving in a thread until the block ends."""
    receiver = Receiver(answers, secret)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join()
