"""single-use signed PUT URLs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scalemule.db.types

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signed_url_uses",
        sa.Column("nonce", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("expires_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_signed_url_uses_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_signed_url_uses")),
    )
    with op.batch_alter_table("signed_url_uses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_signed_url_uses_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("signed_url_uses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signed_url_uses_expires_at"))

    op.drop_table("signed_url_uses")
