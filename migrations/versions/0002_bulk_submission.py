"""Bulk submission: items without a foreign key and with a status index of open items only; jobs: skipped
count and source options

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Kept literal here (not imported from jobs.models) so the migration stays what it was when written.
_OPEN = "status IN ('running', 'failed', 'cancelled')"


def upgrade() -> None:
    # A server default fills existing rows, so the column can be NOT NULL on a populated table.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("n_skipped", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("source_options", sa.JSON(), nullable=True))
    # Every item of a new job is queued: with queued (and succeeded) items left out of the status index, a
    # bulk submission adds no entry to it.
    op.drop_index("ix_items_job_id_status", table_name="items")
    # The foreign key is checked per inserted row, a large part of a bulk COPY (bench/submit_scale.py); items
    # are deleted with their job explicitly.
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_constraint("fk_items_job_id_jobs", type_="foreignkey")
    op.create_index(
        "ix_items_job_id_open_status",
        "items",
        ["job_id", "status"],
        postgresql_where=sa.text(_OPEN),
        sqlite_where=sa.text(_OPEN),
    )


def downgrade() -> None:
    op.drop_index("ix_items_job_id_open_status", table_name="items")
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.create_foreign_key("fk_items_job_id_jobs", "jobs", ["job_id"], ["id"], ondelete="CASCADE")
    op.create_index("ix_items_job_id_status", "items", ["job_id", "status"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("source_options")
        batch_op.drop_column("n_skipped")
