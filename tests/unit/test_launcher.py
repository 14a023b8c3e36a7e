"""Celery arguments of the worker processes the launcher starts."""

from __future__ import annotations

from workers.launcher import celery_argv


def test_a_solo_worker_reserves_one_message_and_a_prefork_one_per_process() -> None:
    # Celery reserves concurrency x prefetch multiplier (1) messages; left unset, a solo pool's concurrency is
    # the number of cores, and a GPU worker would hold chunks other workers could run.
    solo = celery_argv(node="gpu0@h", queues=["q"], concurrency=1, loglevel="INFO")
    assert "--pool=solo" in solo and "--concurrency=1" in solo
    prefork = celery_argv(node="cpu@h", queues=["q", "r"], concurrency=3, loglevel="INFO")
    assert "--pool=prefork" in prefork and "--concurrency=3" in prefork and "--queues=q,r" in prefork
