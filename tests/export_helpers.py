"""Caption jobs made straight in the database, for export tests: no pipeline runs, outcomes are set."""

from __future__ import annotations

from sqlalchemy import literal, update

from jobs.api import Client
from jobs.db import session_scope
from jobs.lifecycle import JobKind
from jobs.models import Item
from jobs.settings import Settings
from jobs.submit import ItemSpec


class NoDispatch:
    """Chunks go nowhere: the items' outcomes are written by the test."""

    def send_chunk(self, kind: JobKind, job_id: str, start: int, stop: int, priority: int) -> None:
        """Drop the chunk."""


def captioned_job(settings: Settings, items: list[tuple[str, str, bool]], source: str = "") -> str:
    """A caption job of (id, input, succeeded) items; each succeeded item's caption is "caption of {id}"."""
    client = Client(settings, NoDispatch())
    specs = [ItemSpec(key=key, source=path) for key, path, _ in items]
    job_id = client.submit_items(JobKind.CAPTION, specs, source=source)
    done = [key for key, _, succeeded in items if succeeded]
    with session_scope(settings.resolved_database_url) as session:
        session.execute(
            update(Item)
            .where(Item.job_id == job_id, Item.key.in_(done))
            .values(status="succeeded", output=literal("caption of ") + Item.key)
        )
    return job_id
