"""Migrations up and down on SQLite and PostgreSQL, and the models matching the migrated schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from jobs.db import downgrade, upgrade
from jobs.models import Base

pytestmark = pytest.mark.integration


def _check_round_trip(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    try:
        assert {"jobs", "items", "alembic_version"} <= set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        downgrade(url, "base")
        assert not {"jobs", "items"} & set(inspect(engine).get_table_names())
        upgrade(url)
        assert {"jobs", "items"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_sqlite_upgrade_downgrade(tmp_path: Path) -> None:
    _check_round_trip(f"sqlite:///{tmp_path / 'state.db'}")


def test_postgresql_upgrade_downgrade(pg_database: str) -> None:
    _check_round_trip(pg_database)
