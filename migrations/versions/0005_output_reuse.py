"""Items: the fingerprint of each recorded output; jobs: whether the job reuses earlier outputs

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Only items with a fingerprint are indexed: outputs recorded before this revision have none and are never
# reused (nothing says what made them).
_FINGERPRINTED = sa.text("fingerprint IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("reuse_outputs", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.String(64), nullable=True))
    op.create_index(
        "ix_items_fingerprint",
        "items",
        ["fingerprint"],
        postgresql_where=_FINGERPRINTED,
        sqlite_where=_FINGERPRINTED,
    )


def downgrade() -> None:
    op.drop_index("ix_items_fingerprint", table_name="items")
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_column("fingerprint")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("reuse_outputs")
