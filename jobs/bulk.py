"""Bulk writes of item rows for submission (COPY on PostgreSQL, executemany elsewhere), and keeping the
planner's statistics of the items table current."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from sqlalchemy import insert, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.db import get_engine
from jobs.lifecycle import ItemStatus
from jobs.models import Item

if TYPE_CHECKING:
    from jobs.items import ItemSpec

log = logging.getLogger(__name__)

#: Statistics are refreshed when a submission adds more than this share of the rows they describe.
STALE_SHARE = 0.2

_COPY = "COPY items (job_id, seq, key, source, text, params, status, attempts) FROM STDIN"


def _copy_rows(session: Session, job_id: str, first_seq: int, specs: list[ItemSpec]) -> None:
    """PostgreSQL COPY, rows encoded by psycopg's C writer: the fastest bulk path, memory per batch."""
    import psycopg  # only PostgreSQL needs the driver: the embedded mode runs without it

    connection = session.connection().connection.driver_connection
    assert connection is not None
    queued = ItemStatus.QUEUED.value
    try:
        with connection.cursor() as cursor, cursor.copy(_COPY) as copy:
            write = copy.write_row
            for seq, spec in enumerate(specs, start=first_seq):
                params = json.dumps(spec.params) if spec.params else None
                write((job_id, seq, spec.key, spec.source, spec.text, params, queued, 0))
    except psycopg.errors.UniqueViolation as exc:
        # The driver's own connection raises the driver's error: give callers SQLAlchemy's, as elsewhere.
        raise IntegrityError(_COPY, None, exc) from exc


def insert_items(session: Session, job_id: str, first_seq: int, specs: list[ItemSpec]) -> None:
    """Insert a batch of queued items with consecutive seqs from `first_seq`."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        _copy_rows(session, job_id, first_seq, specs)
        return
    queued = ItemStatus.QUEUED.value
    rows = [
        {
            "job_id": job_id,
            "seq": seq,
            "key": spec.key,
            "source": spec.source,
            "text": spec.text,
            "params": spec.params,
            "status": queued,
            "attempts": 0,
        }
        for seq, spec in enumerate(specs, start=first_seq)
    ]
    session.execute(insert(Item), rows)


def refresh_statistics(url: str, inserted: int) -> bool:
    """ANALYZE the items table when `inserted` new rows make the planner's statistics stale; True if it did.

    Without current statistics PostgreSQL's generic plan for a worker's `WHERE job_id = ? AND seq = ?`
    can pick the (job_id, key) index and read every item of the job for each row it updates, so that
    recording a micro-batch costs in proportion to the job's size (see bench/pipeline_overhead.py).
    """
    engine = get_engine(url)
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as connection:
        believed = connection.scalar(text("SELECT reltuples FROM pg_class WHERE oid = 'items'::regclass"))
        if believed is not None and inserted <= STALE_SHARE * float(believed):
            return False
        try:
            connection.execute(text("ANALYZE items"))
            connection.commit()
        except Exception:  # e.g. a role that does not own the table: plans stay as they were
            log.warning("could not ANALYZE the items table", exc_info=True)
            return False
    return True
