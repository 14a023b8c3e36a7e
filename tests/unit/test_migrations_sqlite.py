"""Migrations up and down on the embedded SQLite file, and the models matching the migrated schema
(PostgreSQL: tests/integration/test_migrations.py)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import check_migrations_round_trip


def test_sqlite_upgrade_downgrade(tmp_path: Path) -> None:
    check_migrations_round_trip(f"sqlite:///{tmp_path / 'state.db'}")
