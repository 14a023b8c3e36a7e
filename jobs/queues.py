"""How much work the broker holds: queue depth per queue and messages taken but not yet acknowledged."""

from __future__ import annotations

from typing import Any

from celery import Celery

from jobs.broker import queue_for
from jobs.lifecycle import JobKind
from jobs.settings import Settings


def queue_depths(app: Celery, settings: Settings) -> dict[str, int]:
    """Messages waiting in each kind's queue (all priority levels)."""
    depths: dict[str, int] = {}
    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        for kind in JobKind:
            name = queue_for(settings, kind)
            try:
                depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except Exception:  # a queue nobody declared yet holds nothing
                depths[name] = 0
    return depths


def unacked_count(app: Celery) -> int:
    """Messages delivered to workers and not yet acknowledged (Redis keeps them in one hash)."""
    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        client = getattr(channel, "client", None)
        if client is None or not hasattr(channel, "unacked_key"):
            return 0
        return int(client.hlen(channel.unacked_key))
