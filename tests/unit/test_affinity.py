"""Shares of the cores for the processes of a prefork pool."""

from __future__ import annotations

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
