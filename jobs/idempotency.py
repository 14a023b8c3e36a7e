"""Idempotency keys of submissions: a request sent again with its key gets the job its first sending made.

The first request with a key inserts the key's row, naming the job id it is about to submit under, before
the job exists: of two requests racing with one key (a client's retry, two API processes), the database lets
exactly one insert it, and only that one submits. The others look at the row: another request under that key
is refused; the same request gets the job once its submission is over, and is told to wait while it runs.

A submission that fails gives its key up (`release`), so the request can be sent again. One whose process
died before its job existed leaves a row naming no job: after `STALE_AFTER_S` another request takes it over.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError

from jobs.db import session_scope
from jobs.models import IdempotencyKey, Job
from jobs.state import now

#: Seconds after which a key whose job was never created is taken to belong to a submission that died. Far
#: above the time from a key's row to its job's: the checks of the job's parameters and output location.
STALE_AFTER_S = 300.0
#: Times a request looks again at a key whose row disappeared under it (its first request failed).
_CLAIM_TRIES = 5


class KeyState(StrEnum):
    """What a request finds under its key."""

    #: The key is this request's now: it submits the job.
    NEW = "new"
    #: The same request made this job already: answer with it.
    REPLAY = "replay"
    #: The same request is still submitting this job.
    IN_PROGRESS = "in_progress"
    #: Another request used the key.
    REUSED = "reused"


@dataclass(frozen=True)
class Claim:
    """What a request found under its key, and the job id the key names."""

    state: KeyState
    job_id: str


def request_hash(request: dict[str, Any]) -> str:
    """SHA-256 of a request as canonical JSON (sorted keys, no spaces): equal for equal requests."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def claim(database_url: str, *, owner: str, key: str, digest: str, job_id: str) -> Claim:
    """Take `key` for a request with `digest` that would submit as `job_id`, or say whose it is."""
    for _ in range(_CLAIM_TRIES):
        try:
            with session_scope(database_url) as session:
                session.add(
                    IdempotencyKey(owner=owner, key=key, request_hash=digest, job_id=job_id, created_at=now())
                )
            return Claim(KeyState.NEW, job_id)
        except IntegrityError:
            pass  # the key is taken: see by whom
        found = _existing(database_url, owner=owner, key=key, digest=digest, job_id=job_id)
        if found is not None:
            return found
    # Taken and given up again at every look: requests with this key are failing as fast as they come.
    return Claim(KeyState.IN_PROGRESS, job_id)


def _existing(database_url: str, *, owner: str, key: str, digest: str, job_id: str) -> Claim | None:
    """The claim a request gets under a key that was taken; None if the key has been given up since."""
    with session_scope(database_url) as session:
        row = session.get(IdempotencyKey, (owner, key))
        if row is None:
            return None
        if row.request_hash != digest:
            return Claim(KeyState.REUSED, row.job_id)
        job = session.get(Job, row.job_id)
        if job is not None:
            # A job whose submission ended but whose key was never marked (its process died just then) is
            # as done as any: the job row says so, not the key's.
            return Claim(KeyState.IN_PROGRESS if job.submitting else KeyState.REPLAY, row.job_id)
        if _age_s(row.created_at) < STALE_AFTER_S:
            return Claim(KeyState.IN_PROGRESS, row.job_id)
        taken = session.execute(
            update(IdempotencyKey)
            .where(
                IdempotencyKey.owner == owner,
                IdempotencyKey.key == key,
                IdempotencyKey.job_id == row.job_id,
            )
            .values(job_id=job_id, created_at=now())
        )
        if getattr(taken, "rowcount", 0) == 1:
            return Claim(KeyState.NEW, job_id)
        return Claim(KeyState.IN_PROGRESS, row.job_id)


def release(database_url: str, *, owner: str, key: str, job_id: str) -> None:
    """Give the key up after its submission failed, so that the request can be sent again."""
    with session_scope(database_url) as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.owner == owner, IdempotencyKey.key == key, IdempotencyKey.job_id == job_id
            )
        )


def _age_s(created_at: datetime) -> float:
    # SQLite gives timestamps back without their zone; they were written in UTC.
    stamp = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
    return (now() - stamp).total_seconds()
