"""Claiming a chunk on SQLite: attempts are counted at the claim only for the items started at once."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select, update

from jobs.api import Client
from jobs.db import session_scope
from jobs.lifecycle import JobKind
from jobs.models import Item, Job
from jobs.state import checkpoint_items, claim_items
from tests.helpers import embedded_settings
from workers.embedded import InlineDispatcher


def test_the_claim_counts_attempts_of_fresh_items_below_the_window_only(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, chunk_size=8)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {index}\n" for index in range(8)))
    job_id = Client(settings, InlineDispatcher()).submit(JobKind.GENERATE, str(prompts))
    url = settings.resolved_database_url
    with session_scope(url) as session:  # item 1 ran before and its worker died: a suspect
        session.execute(update(Item).where(Item.job_id == job_id, Item.seq == 1).values(attempts=1))
    with session_scope(url) as session:
        items, leased = claim_items(
            session,
            job_id=job_id,
            start=0,
            stop=8,
            worker="w",
            lease_seconds=60,
            max_attempts=3,
            starting_below=4,
        )
    assert not leased
    assert [(item.seq, item.attempts, item.counted) for item in items] == [
        (0, 0, True),
        (1, 1, False),
        (2, 0, True),
        (3, 0, True),
        *((seq, 0, False) for seq in range(4, 8)),
    ]
    with session_scope(url) as session:
        checkpoint_items(
            session, job_id=job_id, worker="w", starting=[4, 5], renewing=[0, 4, 5], lease_seconds=60
        )
        checkpoint_items(session, job_id=job_id, worker="other", starting=[6])
    with session_scope(url) as session:
        attempts = list(
            session.scalars(select(Item.attempts).where(Item.job_id == job_id).order_by(Item.seq))
        )
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.n_queued, job.n_running, job.status) == (0, 8, "running")
    assert attempts == [1, 1, 1, 1, 1, 1, 0, 0]
