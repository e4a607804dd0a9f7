"""audit rollups

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scalemule.db.types

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_rollups",
        sa.Column("chain", sa.String(length=40), nullable=False),
        sa.Column("window_start", scalemule.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("bucket", sa.String(length=64), nullable=False),
        sa.Column("event", sa.JSON(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("chain", "window_start", "bucket", name=op.f("pk_audit_rollups")),
    )
    with op.batch_alter_table("audit_rollups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_rollups_window_start"), ["window_start"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_rollups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_rollups_window_start"))

    op.drop_table("audit_rollups")
