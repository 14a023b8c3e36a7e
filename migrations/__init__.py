"""Alembic migrations for the jobs and items tables."""
