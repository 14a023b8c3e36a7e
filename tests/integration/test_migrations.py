"""Migrations up and down on PostgreSQL, and the models matching the migrated schema (SQLite:
tests/unit/test_migrations_sqlite.py)."""

from __future__ import annotations

import pytest

from tests.helpers import check_migrations_round_trip

pytestmark = pytest.mark.integration


def test_postgresql_upgrade_downgrade(pg_database: str) -> None:
    check_migrations_round_trip(pg_database)
