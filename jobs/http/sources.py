"""Submissions from a source, run in child processes of the server rather than on one of its threads.

Submitting a source reads, checks and inserts every item in Python: a million items keep an interpreter
busy for tens of seconds. On a thread of the server that interpreter is the one answering every other
request, and the GIL made status wait for it (bench/results/api_load-20261208T002821Z-vm.json: p99 274 ms
while a million items were submitted, 28.6 ms without). In a child process the submission has an
interpreter of its own, and the server's threads only wait on a pipe for its outcome: the job id, or the
project's error (jobs.errors), which the routes answer as they would have in the server itself.

The pool is the app's: started at the first source submission (spawned, so a child shares no thread, lock
or connection with the server), shut down when the app stops. A child ignores SIGINT, so that Ctrl-C stops
the server, which waits for a submission in progress, rather than cutting it half-way; a child whose server
is gone exits. Inline items are checked and submitted in the server (at most OVIS_BATCH_API_MAX_INLINE_ITEMS
of them, already parsed). An app given a dispatcher of its own (an object of this process) submits on the
request's thread, with that dispatcher.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

import kombu.exceptions
import sqlalchemy.exc

import storage
from jobs import errors
from jobs.api import Client
from jobs.db import session_scope
from jobs.http.errors import ApiError, database_refusal
from jobs.lifecycle import JobKind
from jobs.logs import configure_logging
from jobs.models import Job
from jobs.settings import Settings

log = logging.getLogger(__name__)

#: Child processes of an app: source submissions running at once; more wait for one of them.
SUBMIT_PROCESSES = 2
#: Seconds between a child's looks at whether its server is still there.
_PARENT_CHECK_S = 1.0


@dataclass(frozen=True)
class SourceSubmission:
    """What `Client.submit` is called with: the request's checked fields and the job id to submit under
    (the one its Idempotency-Key names, if it has one)."""

    kind: JobKind
    source: str
    job_id: str
    params: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    output_url: str | None = None
    skip_existing: bool = False
    notify_url: str | None = None


def submit_source(client: Client, submission: SourceSubmission) -> str:
    """Submit every item of the submission's source with `client`; its job id."""
    return client.submit(
        submission.kind,
        submission.source,
        params=submission.params,
        priority=submission.priority,
        output_url=submission.output_url,
        skip_existing=submission.skip_existing,
        notify_url=submission.notify_url,
        job_id=submission.job_id,
    )


class SubmissionFailed(RuntimeError):
    """A submission's process met an error that is no user's (a bug, or the process died): a 500, with the
    details in the log."""


class SourceSubmitter(Protocol):
    """Where an app submits sources."""

    def submit(self, submission: SourceSubmission) -> str:
        """Submit; the job id, or the project's error."""

    def close(self) -> None:
        """Stop taking submissions and wait for those in progress."""


class ThreadSubmitter:
    """Submits on the calling thread, with the app's Client (and its dispatcher)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def submit(self, submission: SourceSubmission) -> str:
        """Submit; the job id, or the project's error."""
        return submit_source(self.client, submission)

    def close(self) -> None:
        """Nothing runs but on the callers' threads."""


class ProcessSubmitter:
    """Submits in a pool of spawned child processes, each with a Client of its own on the app's settings."""

    def __init__(self, settings: Settings, processes: int = SUBMIT_PROCESSES) -> None:
        self.settings = settings
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, submission: SourceSubmission) -> str:
        """Submit in a child; the job id, or the project's error as the child raised it."""
        for attempt in (1, 2):
            pool = self._started()
            try:
                return pool.submit(_submit_here, submission).result()
            except BrokenProcessPool as exc:
                self._discard(pool)
                # A child that died before this submission made its job (while idle, its death seen late)
                # left nothing behind: once more, in a new pool. One that died submitting left a job that
                # cannot end on its own (cancel it): no second one.
                if attempt == 2 or self._made(submission.job_id):
                    log.error("a submission process died submitting job %s", submission.job_id)
                    raise SubmissionFailed(f"the process submitting job {submission.job_id} died") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Shut the pool down, waiting for the submissions in progress."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _started(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise ApiError(
                    503,
                    "server_stopping",
                    "the server is stopping: send the submission again in a moment",
                    headers={"Retry-After": "5"},
                )
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                    initargs=(self.settings, logging.getLogger().getEffectiveLevel(), os.getpid()),
                )
            return self._pool

    def _made(self, job_id: str) -> bool:
        """Whether the job's row exists (a submission writes it first, in a transaction of its own)."""
        with session_scope(self.settings.resolved_database_url) as session:
            return session.get(Job, job_id) is not None

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Drop a broken pool: the next submission starts another."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)


# -- in a child ----------------------------------------------------------------------------------------------
_client: Client | None = None


def _start_child(settings: Settings, log_level: int, parent: int) -> None:
    """Make the child's Client once; log as the server does; leave Ctrl-C to the server."""
    global _client
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(logging.getLevelName(log_level), settings.log_format)
    _client = Client(settings)
    threading.Thread(target=_exit_without, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_without(parent: int) -> None:
    """End the child once its server has gone (killed, it could not shut its pool down)."""
    while os.getppid() == parent:
        time.sleep(_PARENT_CHECK_S)
    os._exit(0)


def _submit_here(submission: SourceSubmission) -> str:
    """Submit with the child's Client. What reaches the server is the job id or an error it answers as its
    own handlers would: the project's errors (storage's and the database's turned into them), the broker's,
    a ValueError; anything else is a bug, logged here with its traceback."""
    assert _client is not None, "the child was not started"
    try:
        return submit_source(_client, submission)
    except (errors.OvisBatchError, kombu.exceptions.OperationalError, ValueError):
        raise
    except storage.StorageError as exc:
        raise errors.from_storage(exc, role="source") from None
    except sqlalchemy.exc.DBAPIError as exc:
        refusal = database_refusal(exc)
        if refusal is not None:
            raise refusal from None
        failure: Exception = exc
    except Exception as exc:
        failure = exc
    log.error("submitting job %s failed", submission.job_id, exc_info=failure)
    raise SubmissionFailed(f"submitting job {submission.job_id} failed: {type(failure).__name__}")
