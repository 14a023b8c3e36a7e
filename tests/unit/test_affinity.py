"""Shares of the cores for the processes of a prefork pool."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from workers.affinity import cpu_share


def test_each_process_gets_an_equal_run_of_the_cores() -> None:
    cpus = list(range(16))
    assert [cpu_share(index, 3, cpus) for index in range(3)] == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
        [10, 11, 12, 13, 14, 15],
    ]
    assert [cpu_share(index, 2, [2, 3]) for index in range(2)] == [[2], [3]]


def test_more_processes_than_cores_take_the_cores_in_turn() -> None:
    assert [cpu_share(index, 4, [0, 1]) for index in range(4)] == [[0], [1], [0], [1]]


def test_only_the_children_of_a_prefork_pool_are_given_a_share(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import celery_app

    shares: list[int] = []
    monkeypatch.setattr(celery_app, "_load_model", lambda: None)
    monkeypatch.setattr(celery_app, "get_engine", lambda url: None)
    monkeypatch.setattr(celery_app, "dispose_engines", lambda: None)
    monkeypatch.setattr(celery_app, "pin_pool_process", lambda index, processes: shares.append(processes))
    # An in-process pool (a GPU worker's threads pool, or solo) keeps every core for its I/O threads.
    pools = (("celery.concurrency.thread:TaskPool", 32), ("celery.concurrency.prefork:TaskPool", 2))
    for pool, concurrency in pools:
        celery_app._init_worker(sender=SimpleNamespace(pool_cls=pool, concurrency=concurrency))
        celery_app._load_in_child()
    assert shares == [0, 2]
