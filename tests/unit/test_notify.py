"""Notifications of a job's end, against a real HTTP server in a thread that checks their signature: what is
sent and how it is signed, retries with backoff on network errors, 429 and 5xx (not on other answers), a
sender that dies mid-attempt, a job that ends twice, URLs refused at submit, and what `status` shows."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import jobs.notify
from jobs.api import Client
from jobs.errors import InvalidParameters
from jobs.lifecycle import JobKind
from jobs.notify import ATTEMPT_GRACE_S, NotifyState, deliver_notification, deliver_notifications
from jobs.reconcile import reconcile
from jobs.settings import Settings
from jobs.submit import ItemSpec
from jobs.webhook import backoff, check_notify_url, sign, verify
from tests.helpers import embedded_settings, write_photos
from tests.webhook_receiver import Answer, receiving
from workers.embedded import EmbeddedRunner

SECRET = "whsec-test-3f9a"


class Clock:
    """The clock jobs.notify reads, moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.time = jobs.notify.now()
        monkeypatch.setattr(jobs.notify, "now", lambda: self.time)

    def advance(self, seconds: float) -> None:
        self.time += timedelta(seconds=seconds)


class KeptChunks:
    """A dispatcher that keeps the chunks: no worker runs them."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Nothing to do."""


def _settings(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"notify_url": url, "notify_secret": SECRET, "fake_ms_per_item": 1.0}
    return embedded_settings(tmp_path, **(values | overrides))


def _run_generate(settings: Settings, prompts: int = 2) -> str:
    path = settings.home / "prompts.txt"
    path.write_text("".join(f"prompt {n}\n" for n in range(prompts)))
    return EmbeddedRunner(settings).run(JobKind.GENERATE, str(path)).id


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but never listened on: connecting to it is refused, and no other process takes it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_job_that_ends_is_notified_once_signed_with_its_outcome(tmp_path: Path) -> None:
    with receiving(secret=SECRET) as receiver:
        settings = _settings(tmp_path, receiver.url)
        job_id = _run_generate(settings)
        client = Client(settings)
        pending = client.status(job_id).notification
        assert pending is not None and pending.state == "pending" and pending.attempts == 0
        assert not receiver.posts(), "nothing is sent before a reconciler pass"

        assert reconcile(settings).notified == [job_id]
        assert reconcile(settings).notified == [], "a delivered notification is not sent again"

    (post,) = receiver.posts()
    report = client.status(job_id)
    body = post.json()
    assert post.signed is True and post.path == "/hooks/ovis"
    assert post.headers["content-type"] == "application/json"
    assert post.headers["user-agent"].startswith("ovis-batch/")
    assert post.headers["x-ovis-batch-event"] == "job.ended" == body["event"]
    assert post.headers["x-ovis-batch-delivery"] == body["delivery_id"]
    assert post.headers["x-ovis-batch-attempt"] == "1"
    assert (body["job_id"], body["kind"], body["status"]) == (job_id, "generate", "succeeded")
    assert body["counters"] == {"total": 2, "succeeded": 2, "failed": 0, "cancelled": 0, "skipped": 0}
    assert body["errors"] == {}
    assert body["results_url"] == report.export_url and body["results_pending"] is False
    assert body["outputs_url"] == f"{report.output_url.rstrip('/')}/{job_id}/"
    assert report.started_at is not None and report.finished_at is not None
    assert body["started_at"] is not None and body["finished_at"] is not None
    assert body["gpu_seconds"] == pytest.approx(report.gpu_seconds, abs=0.001) and body["gpu_seconds"] > 0
    delivered = report.notification
    assert delivered is not None
    assert (delivered.state, delivered.attempts, delivered.last_status) == ("delivered", 1, 200)
    assert delivered.delivered_at is not None
    assert delivered.describe().startswith(f"delivered to {receiver.url} at ")


def test_a_partial_job_counts_its_failures_by_code(tmp_path: Path) -> None:
    with receiving(secret=SECRET) as receiver:
        settings = _settings(tmp_path, receiver.url)
        photos = tmp_path / "photos"
        write_photos(photos, count=2)
        (photos / "broken.jpg").write_bytes(b"not an image")
        EmbeddedRunner(settings).run(JobKind.CAPTION, str(photos))
        deliver_notifications(settings)

    body = receiver.posts()[0].json()
    assert body["status"] == "partial"
    assert body["counters"]["failed"] == 1 and body["errors"] == {"invalid_image": 1}


def test_a_receiver_that_fails_twice_then_accepts_gets_the_same_notification_three_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with receiving([503, 500, 200], secret=SECRET) as receiver:
        settings = _settings(tmp_path, receiver.url, notify_backoff_s=10.0)
        job_id = _run_generate(settings)
        client = Client(settings)
        clock = Clock(monkeypatch)

        assert deliver_notifications(settings) == []
        first = client.status(job_id).notification
        assert first is not None
        assert (first.state, first.attempts, first.last_status) == ("pending", 1, 503)
        assert first.next_attempt_at is not None and first.next_attempt_at >= clock.time + timedelta(
            seconds=10
        )
        assert "1 attempt failed, the last: HTTP 503; next at" in first.describe()

        assert deliver_notifications(settings) == [], "tried again before its backoff ran out"
        assert len(receiver.posts()) == 1
        clock.advance(10)
        assert deliver_notifications(settings) == []
        clock.advance(19)
        assert deliver_notifications(settings) == [], "the second backoff is twice the first"
        clock.advance(1)
        assert deliver_notifications(settings) == [job_id]

    posts = receiver.posts()
    assert [post.headers["x-ovis-batch-attempt"] for post in posts] == ["1", "2", "3"]
    assert len({post.headers["x-ovis-batch-delivery"] for post in posts}) == 1
    assert all(post.signed for post in posts)
    done = client.status(job_id).notification
    assert done is not None and (done.state, done.attempts, done.last_status) == ("delivered", 3, 200)


def test_a_client_error_gives_up_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with receiving([404]) as receiver:
        settings = _settings(tmp_path, receiver.url)
        job_id = _run_generate(settings)
        clock = Clock(monkeypatch)
        deliver_notifications(settings)
        clock.advance(3600)
        deliver_notifications(settings)

    assert len(receiver.posts()) == 1
    report = Client(settings).status(job_id).notification
    assert report is not None and (report.state, report.attempts, report.last_status) == ("failed", 1, 404)
    assert (
        report.describe() == f"not delivered to {receiver.url}: gave up after 1 attempt, the last: HTTP 404"
    )


def test_429_waits_as_long_as_retry_after_asks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with receiving([Answer(429, (("Retry-After", "120"),)), 200]) as receiver:
        settings = _settings(tmp_path, receiver.url, notify_backoff_s=10.0)
        job_id = _run_generate(settings)
        clock = Clock(monkeypatch)
        deliver_notifications(settings)
        clock.advance(119)
        assert deliver_notifications(settings) == []
        clock.advance(1)
        assert deliver_notifications(settings) == [job_id]
    assert len(receiver.posts()) == 2


def test_network_errors_are_retried_until_the_attempts_run_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}/hook"
    settings = _settings(tmp_path, url, notify_max_attempts=2, notify_backoff_s=5.0)
    job_id = _run_generate(settings)
    clock = Clock(monkeypatch)
    client = Client(settings)

    deliver_notifications(settings)
    first = client.status(job_id).notification
    assert first is not None and (first.state, first.attempts, first.last_status) == ("pending", 1, None)
    assert first.error is not None and "Connection refused" in first.error
    clock.advance(5)
    deliver_notifications(settings)
    last = client.status(job_id).notification
    assert last is not None and (last.state, last.attempts) == ("failed", 2)
    assert "gave up after 2 attempts, the last: ConnectionRefusedError" in last.describe()


def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    with receiving() as elsewhere, receiving([Answer(302, (("Location", elsewhere.url),))]) as receiver:
        settings = _settings(tmp_path, receiver.url)
        job_id = _run_generate(settings)
        deliver_notifications(settings)
    assert len(receiver.posts()) == 1 and not elsewhere.received
    report = Client(settings).status(job_id).notification
    assert report is not None and (report.state, report.last_status) == ("failed", 302)


def test_without_a_secret_the_notification_is_unsigned(tmp_path: Path) -> None:
    with receiving() as receiver:
        settings = _settings(tmp_path, receiver.url, notify_secret=None)
        _run_generate(settings)
        deliver_notifications(settings)
    (post,) = receiver.posts()
    assert "x-ovis-batch-signature" not in post.headers and "x-ovis-batch-timestamp" in post.headers


def test_an_attempt_whose_sender_died_is_made_again_after_its_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with receiving(secret=SECRET) as receiver:
        settings = _settings(tmp_path, receiver.url, notify_timeout_s=5.0)
        job_id = _run_generate(settings)
        clock = Clock(monkeypatch)
        # A process takes the attempt and dies before it sends anything.
        assert jobs.notify._take(settings, job_id) is not None

        assert deliver_notifications(settings) == [], "the dead process's attempt still holds it"
        clock.advance(5 + ATTEMPT_GRACE_S)
        assert deliver_notifications(settings) == [job_id]

    (post,) = receiver.posts()
    assert post.headers["x-ovis-batch-attempt"] == "2" and post.signed


def test_a_job_that_ends_again_is_notified_again_under_a_new_delivery_id(tmp_path: Path) -> None:
    with receiving(secret=SECRET) as receiver:
        settings = _settings(tmp_path, receiver.url)
        client = Client(settings, KeptChunks())
        job_id = client.submit_items(JobKind.GENERATE, [ItemSpec(key="a", text="a fox")])
        client.cancel(job_id)
        deliver_notifications(settings)
        client.resume(job_id)
        reopened = client.status(job_id)
        # Until it ends again, the job shows how the notification of its last ending went.
        assert reopened.notification is not None and reopened.notification.state == "delivered"
        client.cancel(job_id)
        deliver_notifications(settings)

    first, second = (post.json() for post in receiver.posts())
    assert first["status"] == second["status"] == "cancelled"
    assert first["delivery_id"] != second["delivery_id"]


def test_the_default_url_comes_from_the_settings_and_a_job_may_name_its_own(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, notify_url="https://hooks.example.com/ovis?token=abc")
    client = Client(settings, KeptChunks())
    default = client.submit_items(JobKind.GENERATE, [ItemSpec(key="a", text="a fox")])
    own = client.submit_items(
        JobKind.GENERATE, [ItemSpec(key="a", text="a fox")], notify_url="http://other.example.com:8080/x"
    )
    unnotified = Client(embedded_settings(tmp_path), KeptChunks()).submit_items(
        JobKind.GENERATE, [ItemSpec(key="a", text="a fox")]
    )
    shown = client.status(default).notification
    assert shown is not None and shown.url == "https://hooks.example.com/ovis", "the query may hold a token"
    assert shown.as_dict()["state"] is None
    assert shown.describe() == "to https://hooks.example.com/ovis when the job ends"
    other = client.status(own).notification
    assert other is not None and other.url == "http://other.example.com:8080/x"
    assert client.status(unnotified).notification is None
    assert client.status(unnotified).as_dict()["notification"] is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "example.com/hook",
        "http://",
        "https://user:secret@example.com/hook",
        "http://example.com:99999/hook",
        "http://exa mple.com/hook",
    ],
)
def test_urls_other_than_http_and_https_are_refused_at_submit(tmp_path: Path, url: str) -> None:
    settings = embedded_settings(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    with pytest.raises(InvalidParameters, match="--notify-url"):
        Client(settings, KeptChunks()).submit(JobKind.GENERATE, str(prompts), notify_url=url)
    with pytest.raises(InvalidParameters, match="--notify-url"):
        Client(settings.model_copy(update={"notify_url": url}), KeptChunks()).submit(
            JobKind.GENERATE, str(prompts)
        )
    assert Client(settings).list() == [], "nothing was submitted"


def test_http_and_https_urls_are_accepted() -> None:
    assert (
        check_notify_url(" https://hooks.example.com/ovis?token=abc ")
        == "https://hooks.example.com/ovis?token=abc"
    )
    assert check_notify_url("http://127.0.0.1:8080/hook") == "http://127.0.0.1:8080/hook"


def test_the_signature_covers_the_timestamp_and_the_raw_body() -> None:
    body = b'{"job_id":"abc"}'
    signature = sign(SECRET, 1_700_000_000, body)
    assert signature.startswith("sha256=") and len(signature) == len("sha256=") + 64
    assert verify(SECRET, body, "1700000000", signature, at=1_700_000_100)
    assert not verify(SECRET, body + b" ", "1700000000", signature, at=1_700_000_100), "a changed body"
    assert not verify(SECRET, body, "1700000001", signature, at=1_700_000_100), "a changed timestamp"
    assert not verify("another secret", body, "1700000000", signature, at=1_700_000_100)
    assert not verify(SECRET, body, "1700000000", signature, at=1_700_000_000 + 301), "a replay"


def test_the_backoff_doubles_up_to_an_hour_and_honours_retry_after() -> None:
    assert [backoff(n, 10.0) for n in (1, 2, 3)] == [10.0, 20.0, 40.0]
    assert backoff(20, 10.0) == 3600.0
    assert backoff(1, 10.0, retry_after=90.0) == 90.0
    assert backoff(1, 10.0, retry_after=10 * 3600) == 3600.0


def test_status_states_are_the_three_of_the_enum() -> None:
    assert {state.value for state in NotifyState} == {"pending", "delivered", "failed"}


def test_a_stored_url_whose_host_is_no_longer_allowed_is_not_sent(tmp_path: Path) -> None:
    """Hosts are checked again at sending: a job submitted before OVIS_BATCH_NOTIFY_ALLOWED_HOSTS was set (or
    under another list) is not POSTed to a host the list leaves out."""
    with receiving([200]) as receiver:
        job_id = _run_generate(_settings(tmp_path, receiver.url))
        guarded = _settings(tmp_path, receiver.url, notify_allowed_hosts=["hooks.example.com"])
        state = deliver_notification(guarded, job_id)

    assert state is not None and state.value == "failed"
    assert receiver.posts() == []
    report = Client(guarded).status(job_id).notification
    assert report is not None and (report.state, report.attempts, report.last_status) == ("failed", 1, None)
    assert "OVIS_BATCH_NOTIFY_ALLOWED_HOSTS" in report.describe()
