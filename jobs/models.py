"""SQL tables: one row per job, one per item. The database is the record of truth."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: Items in the status index (see Item).
OPEN_STATUS_PREDICATE = "status IN ('running', 'failed', 'cancelled')"


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention (stable names for migrations)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """One submission of one kind, with its parameters and counters kept per item state."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    #: Validated job parameters (JSON, no secrets).
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Where the items came from, as the user gave it.
    source: Mapped[str] = mapped_column(Text, default="")
    #: How the source was read (manifest columns, image root), so that exports can read it again alike.
    source_options: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: Storage URL under which outputs are written: `{output_url}/{job_id}/...`.
    output_url: Mapped[str] = mapped_column(Text)
    #: Export written when the job finished (captions).
    export_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Failed tries of that export (storage down when the job ended): the reconciler tries again, with
    #: backoff, from `export_retry_at`; `export_error` says why the last try failed.
    export_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    export_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    export_retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    n_queued: Mapped[int] = mapped_column(Integer, default=0)
    n_running: Mapped[int] = mapped_column(Integer, default=0)
    n_succeeded: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    n_cancelled: Mapped[int] = mapped_column(Integer, default=0)
    #: Items not computed because an earlier job's output made from the same was reused (`--skip-existing`,
    #: see workers/reuse.py); they are counted in `n_succeeded` too. Rates and ETAs leave them out.
    n_skipped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: True while the submission still inserts items: workers can end every item inserted so far before the
    #: next batch commits, and the job must not be final then.
    submitting: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: `--skip-existing`: an item takes an earlier output with the same fingerprint instead of running.
    reuse_outputs: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Model time spent on the job's items, the sum of theirs (jobs/cost.py).
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    #: Where a notification is POSTed when the job ends (jobs/notify.py); None: no notification.
    notify_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The notification of the job's last ending: `pending`, `delivered`, or `failed` (given up); None
    #: before the job ends, or without a URL. Every ending arms a new one, with a new delivery id.
    notify_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    notify_delivery_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    notify_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The HTTP status of the last attempt, or why it got none (`notify_error`).
    notify_last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    notify_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: When the next attempt is due; while an attempt runs, when another process may take it over.
    notify_retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Item(Base):
    """One unit of work: an image to caption, a prompt to render, an (image, instruction) to edit."""

    __tablename__ = "items"
    # Items are addressed by (job_id, seq): chunk messages carry a seq range, never item rows.
    # The status index leaves out queued and succeeded items, which are nearly all of them: a submission
    # inserts a million queued items without maintaining it, and lookups of running (expired leases), failed
    # (errors by code, retry) and cancelled (resume) items stay fast. Queued items are found by the
    # (job_id, seq) key when a job is resumed.
    __table_args__ = (
        UniqueConstraint("job_id", "key"),
        Index(
            "ix_items_job_id_open_status",
            "job_id",
            "status",
            postgresql_where=text(OPEN_STATUS_PREDICATE),
            sqlite_where=text(OPEN_STATUS_PREDICATE),
        ),
        Index(
            "ix_items_fingerprint",
            "fingerprint",
            postgresql_where=text("fingerprint IS NOT NULL"),
            sqlite_where=text("fingerprint IS NOT NULL"),
        ),
    )

    #: The job's id. Deliberately no foreign key: PostgreSQL checks one per inserted row, a large part of a
    #: bulk submission's COPY (bench/submit_scale.py); items are only written by submission and deleted with
    #: their job explicitly.
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: Position in the job's source, 0-based.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The id the user gave the item (or one derived from its input); outputs are matched by it.
    key: Mapped[str] = mapped_column(String(512))
    #: Input image URL (caption, edit); empty for generate.
    source: Mapped[str] = mapped_column(Text, default="")
    #: Caption question, generation prompt or edit instruction; empty means the job's default.
    text: Mapped[str] = mapped_column(Text, default="")
    #: Per-item parameter overrides (seed, size, ...), validated at submit.
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Caption text, or the URL of the output image.
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: What the output was made from (workers.reuse): equal fingerprints, equal outputs.
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: How the output was made (jobs.provenance): recorded with the output, in the same statement.
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Model time spent on the item: its share of each model call it was part of, over all its attempts
    #: (jobs/cost.py); None for items that never reached the model.
    gpu_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class WorkerTotals(Base):
    """What one worker (a host's GPU, or a CPU worker's host) ended of each kind, and the model time it
    spent: counters whose rate is a worker's throughput (jobs/metrics.py). One row per worker and kind, so the
    table is as large as the fleet."""

    __tablename__ = "worker_totals"

    #: `ovis-gpu<N>@host`, or `ovis@host` (workers/cost.py): stable across restarts, unlike a process id.
    worker: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    #: Items it ended (succeeded or failed), and the model time it spent on them.
    items_ended: Mapped[int] = mapped_column(BigInteger, default=0)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    #: When the worker last recorded anything: workers gone for long are left out of the metrics.
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class IdempotencyKey(Base):
    """An `Idempotency-Key` of a submission to the HTTP API and the job it names, so that a POST sent again
    (a timeout, a retrying client, another API process) never makes a second job (jobs/idempotency.py).

    The job id is chosen and recorded here before the job exists: two requests with one key race for this
    row, and the one that inserts it submits."""

    __tablename__ = "idempotency_keys"

    #: The name of the token that sent it ("" on an API without tokens): callers' keys never meet.
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    #: SHA-256 of the request as validated: the same key with another request is refused.
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
