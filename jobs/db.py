"""Engines, sessions and schema migrations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import ColumnElement, Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

import migrations
from jobs.models import Job

_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs that name no driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the producer read while a worker writes; the busy timeout rides out short write locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _make_sqlite_folder(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def get_engine(url: str) -> Engine:
    """One engine per database URL per process."""
    url = normalize_url(url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                _make_sqlite_folder(url)
                engine = create_engine(url, connect_args={"timeout": 30})
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (after a fork, before the child uses the database)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()


def alembic_config(url: str) -> Config:
    """An Alembic configuration for `url`, pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` up to `revision`."""
    _make_sqlite_folder(url)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at `url` down to `revision` ("base" drops everything)."""
    command.downgrade(alembic_config(url), revision)


def ensure_schema(url: str) -> None:
    """Embedded mode: migrate a SQLite database on first use in this process."""
    if url in _migrated:
        return
    upgrade(url)
    _migrated.add(url)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    factory = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ended_jobs_where(database_url: str, condition: ColumnElement[bool], limit: int) -> list[str]:
    """Ids of at most `limit` jobs meeting `condition`, those that ended first first: the work a pass of the
    reconciler takes on (results files, notifications)."""
    with session_scope(database_url) as session:
        query = select(Job.id).where(condition).order_by(Job.finished_at).limit(limit)
        return list(session.scalars(query))
