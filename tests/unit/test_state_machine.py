"""The state machine on SQLite: every statement that changes a status moves rows only along the tables of
jobs/lifecycle.py, together they make every move the tables allow, and no sequence of operations moves a
finished item but the user's `retry --failed` and `resume`."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from jobs.api import Client
from jobs.db import ensure_schema, session_scope
from jobs.lifecycle import (
    FINAL_JOB_STATES,
    ITEM_TRANSITIONS,
    JOB_TRANSITIONS,
    USER_REOPENS,
    ItemStatus,
    JobKind,
    JobStatus,
    item_sources,
    job_sources,
)
from jobs.models import Item, Job
from jobs.repair import repair_job
from jobs.settings import Settings
from jobs.state import (
    COUNTERS,
    cancel_items,
    checkpoint_items,
    claim_items,
    claim_next_items,
    expire_leases,
    finalize_job,
    now,
    record_failures,
    record_successes,
    release_items,
    reopen_job,
    restart_job,
    transition,
)
from tests.helpers import embedded_settings

Q, R, S, F, C = ItemStatus
WORKER, OTHER = "w1", "w2"
#: One item per state, in this order, for the statement tests.
EVERY_STATE = list(ItemStatus)
SEQS = list(range(len(EVERY_STATE)))

Op = Callable[[Settings, str], object]


class Dropped:
    """A dispatcher that sends nothing: these tests look at the database only."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Send nothing."""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = embedded_settings(tmp_path_factory.mktemp("state"))
    ensure_schema(settings.resolved_database_url)
    return settings


def new_job(
    settings: Settings,
    states: Sequence[ItemStatus],
    *,
    status: JobStatus = JobStatus.RUNNING,
    expired: bool = True,
    attempts: int = 0,
    cancel_requested: bool = False,
) -> str:
    """A job whose items are in `states`, with counters that match; running items are leased to WORKER."""
    job_id = uuid.uuid4().hex
    t = now()
    lease = t + timedelta(seconds=-60 if expired else 600)
    counts = Counter(states)
    with session_scope(settings.resolved_database_url) as session:
        session.add(
            Job(
                id=job_id,
                kind=JobKind.GENERATE.value,
                status=status.value,
                params={},
                output_url=str(Path(settings.resolved_storage_url)),
                total=len(states),
                n_skipped=0,
                cancel_requested=cancel_requested,
                submitting=False,
                **{column: counts[state] for state, column in COUNTERS.items()},
            )
        )
        session.add_all(
            Item(
                job_id=job_id,
                seq=seq,
                key=f"item{seq}",
                text="a lighthouse at dusk",
                status=state.value,
                attempts=attempts,
                worker=WORKER if state == R else None,
                lease_until=lease if state == R else None,
                error_code="internal_error" if state == F else None,
                finished_at=t if state.final else None,
            )
            for seq, state in enumerate(states)
        )
    return job_id


def items(settings: Settings, job_id: str) -> dict[int, tuple[ItemStatus, str | None]]:
    """seq -> (status, worker)."""
    with session_scope(settings.resolved_database_url) as session:
        rows = session.execute(select(Item.seq, Item.status, Item.worker).where(Item.job_id == job_id))
        return {seq: (ItemStatus(status), worker) for seq, status, worker in rows}


def job_status(settings: Settings, job_id: str) -> JobStatus:
    with session_scope(settings.resolved_database_url) as session:
        return JobStatus(session.scalar(select(Job.status).where(Job.id == job_id)))


def assert_counters_match_items(settings: Settings, job_id: str) -> None:
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        query = select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
        counts = {status: int(count) for status, count in session.execute(query)}
        kept = {state: getattr(job, column) for state, column in COUNTERS.items()}
        assert kept == {state: counts.get(state.value, 0) for state in ItemStatus}
        assert job.total == sum(counts.values())
        assert 0 <= job.n_skipped <= job.n_succeeded


def moves(settings: Settings, job_id: str, op: Op) -> dict[ItemStatus, ItemStatus]:
    """Run `op` on the job; return how it moved each item: a status changed, or a lease taken over by another
    worker (running -> running)."""
    before = items(settings, job_id)
    op(settings, job_id)
    after = items(settings, job_id)
    return {before[seq][0]: after[seq][0] for seq in before if after[seq] != before[seq]}


def with_session(function: Callable[..., object], **kwargs: Any) -> Op:
    def op(settings: Settings, job_id: str) -> None:
        with session_scope(settings.resolved_database_url) as session:
            function(session, job_id=job_id, **kwargs)

    return op


def with_client(call: Callable[[Client, str], object]) -> Op:
    def op(settings: Settings, job_id: str) -> None:
        call(Client(settings, Dropped()), job_id)

    return op


@dataclass(frozen=True)
class Case:
    """A statement (or a user command), the job it runs on and the moves it must make."""

    name: str
    op: Op
    expected: dict[ItemStatus, ItemStatus]
    job: dict[str, Any] = field(default_factory=dict)


CLAIM = {"start": 0, "stop": len(SEQS), "worker": OTHER, "lease_seconds": 60, "max_attempts": 3}
ITEM_CASES = [
    Case("claim while leases hold", with_session(claim_items, **CLAIM), {Q: R}, {"expired": False}),
    Case("claim after a lease expired", with_session(claim_items, **CLAIM), {Q: R, R: R}),
    Case(
        "claim of items started at once", with_session(claim_items, **CLAIM, starting_below=5), {Q: R, R: R}
    ),
    Case("claim of items tried too often", with_session(claim_items, **CLAIM), {Q: F, R: F}, {"attempts": 3}),
    Case(
        "read-ahead claim",
        with_session(claim_next_items, after=0, before=5, limit=5, worker=OTHER, lease_seconds=60),
        {Q: R},
    ),
    Case(
        "checkpoint",
        with_session(checkpoint_items, worker=WORKER, starting=SEQS, renewing=SEQS, lease_seconds=60),
        {},
    ),
    Case("outputs recorded", with_session(record_successes, outputs={s: f"out{s}" for s in SEQS}), {R: S}),
    Case(
        "failures recorded",
        with_session(record_failures, failures={s: ("internal_error", "boom") for s in SEQS}),
        {R: F},
    ),
    Case("hand-back", with_session(release_items, seqs=SEQS, worker=WORKER), {R: Q}),
    Case(
        "hand-back by a worker that lost the lease", with_session(release_items, seqs=SEQS, worker=OTHER), {}
    ),
    Case("expired leases", with_session(expire_leases), {R: Q}),
    Case("leases that hold", with_session(expire_leases), {}, {"expired": False}),
    Case("every lease released", with_session(expire_leases, every=True), {R: Q}, {"expired": False}),
    Case("cancel", with_session(cancel_items), {Q: C}),
    Case("cancel of a chunk", with_session(cancel_items, seqs=SEQS), {Q: C, R: C}),
    Case("finalize", with_session(finalize_job), {}),
    Case("repair", lambda settings, job_id: repair_job(settings, job_id), {}),
    Case("retry --failed", with_client(lambda client, job_id: client.retry_failed(job_id)), {F: Q}),
    Case("resume", with_client(lambda client, job_id: client.resume(job_id)), {R: Q}),
    Case(
        "resume of a cancelled job",
        with_client(lambda client, job_id: client.resume(job_id)),
        {R: Q, C: Q},
        {"cancel_requested": True},
    ),
]


@pytest.mark.parametrize("case", ITEM_CASES, ids=lambda case: case.name)
def test_each_statement_moves_items_out_of_the_states_the_table_allows(config: Settings, case: Case) -> None:
    job_id = new_job(config, EVERY_STATE, **case.job)
    made = moves(config, job_id, case.op)
    assert made == case.expected
    assert all(target in ITEM_TRANSITIONS[source] for source, target in made.items())
    assert_counters_match_items(config, job_id)


def test_together_the_statements_make_every_move_of_the_item_table(config: Settings) -> None:
    made = set()
    for case in ITEM_CASES:
        made |= set(moves(config, new_job(config, EVERY_STATE, **case.job), case.op).items())
    assert made == {(source, target) for source, targets in ITEM_TRANSITIONS.items() for target in targets}
    # Statements that move items from every state the table allows to their target.
    assert {source for source, target in made if target == S} == set(item_sources(S))
    assert {source for source, target in made if target == C} == set(item_sources(C))
    assert {source for source, target in made if target == F} == set(item_sources(F))


@pytest.mark.parametrize("source", list(ItemStatus))
@pytest.mark.parametrize("target", list(ItemStatus))
def test_the_transition_function_makes_only_moves_of_the_table(
    config: Settings, source: ItemStatus, target: ItemStatus
) -> None:
    job_id = new_job(config, EVERY_STATE)
    move = with_session(
        transition, where=Item.seq >= 0, source=source, target=target, values={"worker": "moved"}
    )
    if target in ITEM_TRANSITIONS[source]:
        assert moves(config, job_id, move) == {source: target}
    else:
        before = items(config, job_id)
        with pytest.raises(ValueError, match=f"item cannot go from {source.value} to {target.value}"):
            move(config, job_id)
        assert items(config, job_id) == before
    assert_counters_match_items(config, job_id)


def test_a_statement_naming_a_move_the_table_forbids_is_refused() -> None:
    with pytest.raises(ValueError, match="item cannot go from succeeded to queued"):
        item_sources(Q, among=(F, S))
    with pytest.raises(ValueError, match="job cannot go from succeeded to partial"):
        job_sources(JobStatus.PARTIAL, among=(JobStatus.SUCCEEDED,))
    assert job_sources(*FINAL_JOB_STATES) == (JobStatus.QUEUED, JobStatus.RUNNING)


# -- jobs ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobCase:
    """A statement on job rows, the items each job has and the moves of job status it must make."""

    name: str
    op: Op
    items: list[ItemStatus]
    expected: dict[JobStatus, JobStatus]
    cancel_requested: bool = False


def _ended(status: JobStatus) -> dict[JobStatus, JobStatus]:
    return {JobStatus.QUEUED: status, JobStatus.RUNNING: status}


_REOPENED = {status: JobStatus.RUNNING for status in JobStatus if status.final}
JOB_CASES = [
    JobCase("start", with_session(claim_items, **CLAIM), [Q], {JobStatus.QUEUED: JobStatus.RUNNING}),
    JobCase("finalize, all succeeded", with_session(finalize_job), [S, S], _ended(JobStatus.SUCCEEDED)),
    JobCase("finalize, some failed", with_session(finalize_job), [S, F], _ended(JobStatus.PARTIAL)),
    JobCase("finalize, all failed", with_session(finalize_job), [F], _ended(JobStatus.FAILED)),
    JobCase("finalize, cancelled", with_session(finalize_job), [S, C], _ended(JobStatus.CANCELLED), True),
    JobCase("reopen", with_session(reopen_job), [S, Q], _REOPENED),
    JobCase("restart", with_session(restart_job), [S], _REOPENED),
]


def job_moves(settings: Settings, case: JobCase) -> dict[JobStatus, JobStatus]:
    """Run the case on one job in each status; return how it moved each."""
    made = {}
    for status in JobStatus:
        job_id = new_job(settings, case.items, status=status, cancel_requested=case.cancel_requested)
        case.op(settings, job_id)
        if (after := job_status(settings, job_id)) != status:
            made[status] = after
    return made


@pytest.mark.parametrize("case", JOB_CASES, ids=lambda case: case.name)
def test_each_statement_moves_jobs_out_of_the_states_the_table_allows(
    config: Settings, case: JobCase
) -> None:
    made = job_moves(config, case)
    assert made == case.expected
    assert all(target in JOB_TRANSITIONS[source] for source, target in made.items())


def test_together_the_statements_make_every_move_of_the_job_table(config: Settings) -> None:
    made = {move for case in JOB_CASES for move in job_moves(config, case).items()}
    assert made == {(source, target) for source, targets in JOB_TRANSITIONS.items() for target in targets}


# -- any sequence -------------------------------------------------------------------------------------------
PROPERTY_ITEMS = 6
_seq = st.integers(0, PROPERTY_ITEMS)
_seqs = st.lists(st.integers(0, PROPERTY_ITEMS - 1), unique=True, max_size=PROPERTY_ITEMS)
_worker = st.sampled_from((WORKER, OTHER))
_lease = st.sampled_from((-60, 600))  # already expired, or holding


def _op(name: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    return st.tuples(st.just(name), st.fixed_dictionaries(fields))


OPERATIONS = st.one_of(
    _op(
        "claim",
        start=_seq,
        stop=_seq,
        worker=_worker,
        lease_seconds=_lease,
        max_attempts=st.integers(1, 3),
        starting_below=_seq,
    ),
    _op("claim_next", after=_seq, before=_seq, limit=st.integers(1, 3), worker=_worker, lease_seconds=_lease),
    _op("checkpoint", worker=_worker, starting=_seqs, renewing=_seqs, lease_seconds=_lease),
    _op("succeed", seqs=_seqs, reused=st.booleans()),
    _op("fail", seqs=_seqs),
    _op("release", seqs=_seqs, worker=_worker, uncount=_seqs),
    _op("expire", every=st.booleans()),
    _op("cancel_chunk", seqs=_seqs),
    _op("finalize"),
    _op("repair"),
    _op("cancel"),
    _op("retry", codes=st.sampled_from(((), ("internal_error",), ("poisoned",)))),
    _op("resume", release_running=st.booleans()),
)
#: Who may move a final item, and how.
USER_COMMANDS = {(F, Q): "retry", (C, Q): "resume"}


def apply(settings: Settings, job_id: str, name: str, args: dict[str, Any]) -> None:
    client = Client(settings, Dropped())
    if name == "cancel":
        client.cancel(job_id)
    elif name == "retry":
        client.retry_failed(job_id, args["codes"])
    elif name == "resume":
        client.resume(job_id, release_running=args["release_running"])
    elif name == "repair":
        repair_job(settings, job_id)
    else:
        with session_scope(settings.resolved_database_url) as session:
            if name == "claim":
                claim_items(session, job_id=job_id, **args)
            elif name == "claim_next":
                claim_next_items(session, job_id=job_id, **args)
            elif name == "checkpoint":
                checkpoint_items(session, job_id=job_id, **args)
            elif name == "succeed":
                outputs = {seq: f"out{seq}" for seq in args["seqs"]}
                record_successes(session, job_id=job_id, outputs=outputs, reused=args["reused"])
            elif name == "fail":
                failures = {seq: ("internal_error", "boom") for seq in args["seqs"]}
                record_failures(session, job_id=job_id, failures=failures)
            elif name == "release":
                release_items(session, job_id=job_id, **args)
            elif name == "expire":
                expire_leases(session, job_id=job_id, **args)
            elif name == "cancel_chunk":
                cancel_items(session, job_id=job_id, seqs=args["seqs"])
            elif name == "finalize":
                finalize_job(session, job_id=job_id)
            else:
                raise AssertionError(name)


@hypothesis_settings(max_examples=60, deadline=None)
@given(operations=st.lists(OPERATIONS, max_size=16))
def test_no_sequence_of_operations_moves_a_final_item_but_retry_and_resume(
    config: Settings, operations: list[tuple[str, dict[str, Any]]]
) -> None:
    job_id = new_job(config, [Q] * PROPERTY_ITEMS, status=JobStatus.QUEUED)
    for name, args in operations:
        before, job_before = items(config, job_id), job_status(config, job_id)
        apply(config, job_id, name, args)
        after, job_after = items(config, job_id), job_status(config, job_id)
        for seq, (source, _) in before.items():
            target = after[seq][0]
            if target == source:
                continue
            assert target in ITEM_TRANSITIONS[source], f"{name} moved item {seq}: {source} -> {target}"
            if source.final:
                assert (source, target) in USER_REOPENS, f"{name} moved final item {seq} to {target}"
                assert USER_COMMANDS[source, target] == name, f"{name} moved final item {seq} to {target}"
        if job_after != job_before:
            assert job_after in JOB_TRANSITIONS[job_before], (
                f"{name} moved the job: {job_before} -> {job_after}"
            )
        assert_counters_match_items(config, job_id)
