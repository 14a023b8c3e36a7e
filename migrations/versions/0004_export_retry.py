"""Jobs: failed tries of the export written when a job ends, why the last one failed and when to try again

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Final jobs that exist already without an export get one from the reconciler: nothing to fill in.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("export_failures", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("export_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("export_retry_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("export_retry_at")
        batch_op.drop_column("export_error")
        batch_op.drop_column("export_failures")
