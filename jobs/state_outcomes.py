"""How items end: outputs and failures recorded for running items, cancellations, outputs to reuse.

Every statement that changes an item's status takes the states it may move out of from `ITEM_TRANSITIONS`
(`items_movable`): an output recorded twice, or by a worker whose item already ended, moves nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import JSON, Integer, Text, bindparam, cast, func, literal_column, select, true, update
from sqlalchemy.orm import Session

from jobs.lifecycle import ItemStatus, item_sources
from jobs.models import Item
from jobs.state_moves import (
    ITEMS,
    JOBS,
    is_postgresql,
    items_movable,
    move_counters,
    now,
    rowcount,
    transition,
)

_C = ITEMS.c
_J = JOBS.c
_RUNNING, _SUCCEEDED, _FAILED = ItemStatus.RUNNING, ItemStatus.SUCCEEDED, ItemStatus.FAILED

_SUCCEEDED_VALUES: dict[str, Any] = {
    "status": _SUCCEEDED.value,
    "finished_at": bindparam("b_t"),
    "lease_until": None,
    "error_code": None,
    "error_message": None,
}
# One JSON object {seq: [output, fingerprint, provenance]}: one parameter for the driver to pass (arrays are
# escaped item by item).
_OUTPUTS = (
    func.json_each(bindparam("b_outputs", type_=JSON)).table_valued("key", "value").render_derived(name="v")
)
_OF_JOB = _C.job_id == bindparam("b_job")
# Outputs and failures are recorded for running items only: one recorded twice, or for an item that ended
# otherwise meanwhile (cancelled, handed back), moves nothing.
_RECORDABLE = items_movable(_SUCCEEDED, among=(_RUNNING,))
#: PostgreSQL: a micro-batch's outputs in one UPDATE joined to the seqs and outputs of the JSON object.
_RECORD_SUCCESSES = (
    update(ITEMS)
    .where(_OF_JOB, _RECORDABLE, _C.seq == _OUTPUTS.c.key.cast(Integer))
    .values(
        output=_OUTPUTS.c.value.op("->>", return_type=Text)(literal_column("0")),
        fingerprint=_OUTPUTS.c.value.op("->>", return_type=Text)(literal_column("1")),
        # Through text: a missing provenance (JSON null) is stored as SQL NULL.
        provenance=cast(_OUTPUTS.c.value.op("->>", return_type=Text)(literal_column("2")), JSON),
        **_SUCCEEDED_VALUES,
    )
)
#: Elsewhere: one UPDATE per output (executemany).
_RECORD_SUCCESS = (
    update(ITEMS)
    .where(_OF_JOB, _RECORDABLE, _C.seq == bindparam("b_seq"))
    .values(
        output=bindparam("b_output"),
        fingerprint=bindparam("b_fingerprint"),
        provenance=bindparam("b_provenance", type_=JSON(none_as_null=True)),
        **_SUCCEEDED_VALUES,
    )
)
_COUNT_SKIPPED = (
    update(JOBS).where(_J.id == bindparam("job")).values(n_skipped=_J.n_skipped + bindparam("count"))
)
_REUSABLE = select(_C.fingerprint, _C.output, _C.provenance).where(
    _C.fingerprint.in_(bindparam("prints", expanding=True)),
    _C.status == _SUCCEEDED.value,
    _C.job_id != bindparam("job"),
    _C.output.is_not(None),
)
_RECORD_FAILURE = (
    update(ITEMS)
    .where(_OF_JOB, items_movable(_FAILED, among=(_RUNNING,)), _C.seq == bindparam("b_seq"))
    .values(
        status=_FAILED.value,
        error_code=bindparam("b_code"),
        error_message=bindparam("b_message"),
        finished_at=bindparam("b_t"),
        lease_until=None,
    )
)


def record_successes(
    session: Session,
    *,
    job_id: str,
    outputs: dict[int, str],
    fingerprints: dict[int, str] | None = None,
    provenance: dict[int, dict[str, Any]] | None = None,
    reused: bool = False,
) -> int:
    """Record outputs of running items (seq -> caption or URL, what made each: see workers.reuse, and how:
    see jobs.provenance); return how many were recorded. `reused` outputs were taken from earlier jobs and
    count as skipped."""
    if not outputs:
        return 0
    t = now()
    prints, made = fingerprints or {}, provenance or {}
    if is_postgresql(session):
        values = {seq: [out, prints.get(seq), made.get(seq)] for seq, out in outputs.items()}
        result = session.execute(_RECORD_SUCCESSES, {"b_job": job_id, "b_t": t, "b_outputs": values})
    else:
        rows = [
            {
                "b_job": job_id,
                "b_seq": seq,
                "b_output": out,
                "b_fingerprint": prints.get(seq),
                "b_provenance": made.get(seq),
                "b_t": t,
            }
            for seq, out in outputs.items()
        ]
        result = session.execute(_RECORD_SUCCESS, rows)
    moved = rowcount(result)
    move_counters(session, job_id, _RUNNING, _SUCCEEDED, moved)
    if reused and moved:
        session.execute(_COUNT_SKIPPED, {"job": job_id, "count": moved})
    return moved


def reusable_outputs(
    session: Session, *, job_id: str, fingerprints: Collection[str]
) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Outputs of succeeded items of other jobs with these fingerprints, and their provenance
    (fingerprint -> (output, provenance))."""
    if not fingerprints:
        return {}
    rows = session.execute(_REUSABLE, {"prints": list(fingerprints), "job": job_id})
    return {fingerprint: (output, provenance) for fingerprint, output, provenance in rows}


def record_failures(session: Session, *, job_id: str, failures: dict[int, tuple[str, str]]) -> int:
    """Record failed running items (seq -> (error_code, message)); return how many were recorded."""
    if not failures:
        return 0
    t = now()
    rows = [
        {"b_job": job_id, "b_seq": seq, "b_code": code, "b_message": message[:2000], "b_t": t}
        for seq, (code, message) in failures.items()
    ]
    moved = rowcount(session.execute(_RECORD_FAILURE, rows))
    move_counters(session, job_id, _RUNNING, _FAILED, moved)
    return moved


def cancel_items(session: Session, *, job_id: str, seqs: Sequence[int] | None = None) -> int:
    """Cancel queued items (all of the job's, or those of `seqs` in any state the table lets end cancelled:
    queued or running)."""
    values = {"finished_at": now(), "lease_until": None}
    # The job's running items are left to their workers, which cancel them at their next micro-batch.
    sources = item_sources(ItemStatus.CANCELLED, among=(ItemStatus.QUEUED,) if seqs is None else ())
    where = true() if seqs is None else Item.seq.in_(seqs)
    return sum(
        transition(
            session, job_id=job_id, where=where, source=source, target=ItemStatus.CANCELLED, values=values
        )
        for source in sources
    )
