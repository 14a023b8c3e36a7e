"""Jobs: the notification sent when a job ends and its delivery; items and jobs: GPU-seconds spent; workers:
items ended and GPU-seconds per worker and kind

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Jobs that exist already have no notification URL and no recorded model time: nothing to fill in.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpu_seconds", sa.Float(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("notify_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("notify_state", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("notify_delivery_id", sa.String(32), nullable=True))
        batch_op.add_column(sa.Column("notify_attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("notify_last_status", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("notify_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("notify_retry_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpu_seconds", sa.Float(), nullable=True))
    op.create_table(
        "worker_totals",
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("items_ended", sa.BigInteger(), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("worker", "kind", name=op.f("pk_worker_totals")),
    )


def downgrade() -> None:
    op.drop_table("worker_totals")
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_column("gpu_seconds")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name in (
            "notified_at",
            "notify_retry_at",
            "notify_error",
            "notify_last_status",
            "notify_attempts",
            "notify_delivery_id",
            "notify_state",
            "notify_url",
            "gpu_seconds",
        ):
            batch_op.drop_column(name)
