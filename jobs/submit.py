"""Submission: validate, insert the job and its items in bulk, dispatch chunks as they are formed."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.db import ensure_schema, session_scope
from jobs.dispatch import Dispatcher
from jobs.errors import InputNotAllowed, InvalidParameters, InvalidSource
from jobs.lifecycle import ItemStatus, JobKind
from jobs.models import Item, Job
from jobs.params import validate_params, validate_text
from jobs.settings import Settings
from storage import is_within

log = logging.getLogger(__name__)

#: Rows per insert batch: large enough for bulk speed, small enough for flat memory.
INSERT_BATCH = 5000
#: Per-item parameters a manifest may set, per kind (the rest are job-wide).
ITEM_PARAMS: dict[JobKind, frozenset[str]] = {
    JobKind.CAPTION: frozenset({"max_new_tokens", "seed"}),
    JobKind.GENERATE: frozenset({"seed", "width", "height", "steps", "txt_cfg"}),
    JobKind.EDIT: frozenset({"seed", "steps", "img_cfg", "txt_cfg"}),
}


@dataclass(frozen=True)
class ItemSpec:
    """One item as a source yields it."""

    key: str
    #: Input image URL (caption, edit).
    source: str = ""
    #: Caption question, generation prompt or edit instruction.
    text: str = ""
    params: dict[str, Any] | None = field(default=None)


def new_job_id() -> str:
    """A new job id: 32 hex digits."""
    return uuid.uuid4().hex


def check_item(kind: JobKind, spec: ItemSpec, settings: Settings, roots: list[str]) -> ItemSpec:
    """Validate one item; raise InvalidParameters / InputNotAllowed naming the item."""
    if not spec.key or len(spec.key) > 512:
        raise InvalidParameters(f"item id {spec.key[:60]!r} must have 1 to 512 characters")
    where = f"item {spec.key!r}"
    if kind in (JobKind.CAPTION, JobKind.EDIT):
        if not spec.source:
            raise InvalidParameters(f"{where}: no input image")
        if not is_within(spec.source, roots):
            raise InputNotAllowed(
                f"{where}: {spec.source} is outside the allowed input roots ({', '.join(roots)}); "
                "set OVIS_BATCH_INPUT_ROOTS to allow it"
            )
    text = validate_text(
        spec.text,
        max_chars=settings.max_prompt_chars,
        what=f"{where}: prompt",
        required=kind is not JobKind.CAPTION,
    )
    params = spec.params
    if params:
        unknown = set(params) - ITEM_PARAMS[kind]
        if unknown:
            allowed = ", ".join(sorted(ITEM_PARAMS[kind]))
            raise InvalidParameters(
                f"{where}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                f"per-item parameters for {kind.value}: {allowed}"
            )
        params = validate_params(kind, params, where=where).model_dump(include=set(params))
    return ItemSpec(key=spec.key, source=spec.source, text=text, params=params or None)


def _copy_rows(session: Session, job_id: str, first_seq: int, specs: list[ItemSpec]) -> None:
    """PostgreSQL COPY: the fastest bulk path, constant memory per batch."""
    connection = session.connection().connection.driver_connection
    assert connection is not None
    buffer = io.StringIO()
    for offset, spec in enumerate(specs):
        params = json.dumps(spec.params) if spec.params else None
        buffer.write(
            "\t".join(
                _copy_field(v)
                for v in (
                    job_id,
                    str(first_seq + offset),
                    spec.key,
                    spec.source,
                    spec.text,
                    params,
                    ItemStatus.QUEUED.value,
                    "0",
                )
            )
        )
        buffer.write("\n")
    with (
        connection.cursor() as cursor,
        cursor.copy(
            "COPY items (job_id, seq, key, source, text, params, status, attempts) FROM STDIN"
        ) as copy,
    ):
        copy.write(buffer.getvalue())


def _copy_field(value: str | None) -> str:
    if value is None:
        return r"\N"
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def insert_items(session: Session, job_id: str, first_seq: int, specs: list[ItemSpec]) -> None:
    """Insert a batch of items with consecutive seqs starting at `first_seq`."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        _copy_rows(session, job_id, first_seq, specs)
        return
    session.execute(
        insert(Item),
        [
            {
                "job_id": job_id,
                "seq": first_seq + i,
                "key": s.key,
                "source": s.source,
                "text": s.text,
                "params": s.params,
                "status": ItemStatus.QUEUED.value,
                "attempts": 0,
            }
            for i, s in enumerate(specs)
        ],
    )


def _batches(items: Iterable[ItemSpec], size: int) -> Iterator[list[ItemSpec]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def submit_job(
    settings: Settings,
    *,
    kind: JobKind,
    items: Iterable[ItemSpec],
    params: dict[str, Any],
    dispatcher: Dispatcher,
    source: str = "",
    priority: int = 0,
    output_url: str | None = None,
) -> str:
    """Create a job from a stream of items and dispatch its chunks; return the job id.

    Nothing is dispatched for a job whose parameters are invalid. An invalid item stops the submission:
    the job and what was inserted of it are deleted, and the error names the item.
    """
    url = settings.resolved_database_url
    if settings.embedded:
        ensure_schema(url)
    job_params = validate_params(kind, params).model_dump()
    if not 0 <= priority <= 9:
        raise InvalidParameters(f"priority must be between 0 (lowest) and 9 (got {priority})")
    job_id = new_job_id()
    with session_scope(url) as session:
        session.add(
            Job(
                id=job_id,
                kind=kind.value,
                status="queued",
                priority=priority,
                params=job_params,
                source=source,
                output_url=output_url or settings.resolved_storage_url,
                total=0,
                n_queued=0,
                n_running=0,
                n_succeeded=0,
                n_failed=0,
                n_cancelled=0,
                cancel_requested=False,
            )
        )
    roots = settings.allowed_input_roots
    chunk = settings.chunk_size
    total = dispatched = 0
    try:
        for batch in _batches(items, INSERT_BATCH):
            checked = [check_item(kind, spec, settings, roots) for spec in batch]
            with session_scope(url) as session:
                insert_items(session, job_id, total, checked)
                session.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .values(total=Job.total + len(checked), n_queued=Job.n_queued + len(checked))
                )
            total += len(checked)
            while total - dispatched >= chunk:
                dispatcher.send_chunk(kind, job_id, dispatched, dispatched + chunk, priority)
                dispatched += chunk
    except Exception as exc:
        with session_scope(url) as session:
            session.execute(delete(Item).where(Item.job_id == job_id))
            session.execute(delete(Job).where(Job.id == job_id))
        if isinstance(exc, IntegrityError):
            raise InvalidSource(
                f"two items of {source or 'the source'} share one id; item ids must be unique within a job"
            ) from None
        raise
    if total == 0:
        with session_scope(url) as session:
            session.execute(delete(Job).where(Job.id == job_id))
        raise InvalidParameters(f"the source {source or '(given)'} holds no items")
    if dispatched < total:
        dispatcher.send_chunk(kind, job_id, dispatched, total, priority)
    log.info("submitted job", extra={"job_id": job_id, "kind": kind.value, "items": total})
    return job_id
