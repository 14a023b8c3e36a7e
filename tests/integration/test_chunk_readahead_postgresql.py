"""The read-ahead scenarios of tests/unit/test_chunk_readahead.py whose claims depend on the database, run on
PostgreSQL (claims with SKIP LOCKED) instead of the embedded SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit import test_chunk_readahead as on_sqlite

pytestmark = pytest.mark.integration


def test_the_next_chunk_takes_its_first_micro_batch_from_the_read_ahead(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_sqlite.test_the_next_chunk_takes_its_first_micro_batch_from_the_read_ahead(
        tmp_path, pg_database, monkeypatch
    )


def test_items_read_ahead_are_left_by_the_chunk_of_another_worker_and_run_in_this_workers_next_chunk(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_sqlite.test_items_read_ahead_are_left_by_the_chunk_of_another_worker_and_run_in_this_workers_next_chunk(
        tmp_path, pg_database, monkeypatch
    )
