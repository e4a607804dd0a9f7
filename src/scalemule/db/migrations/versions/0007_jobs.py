"""durable background jobs

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scalemule.db.types

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=128), nullable=False),
        sa.Column("payload", sa.JSON(none_as_null=False), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=True),
        sa.Column("run_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_token", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("worker_id", sa.String(length=40), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("progress_message", sa.String(length=500), nullable=True),
        sa.Column("result", sa.JSON(none_as_null=False), nullable=True),
        sa.Column("last_error", sa.String(length=2000), nullable=True),
        sa.Column("created_by", sa.String(length=40), nullable=True),
        sa.Column("created_key", sa.String(length=40), nullable=True),
        sa.Column("created_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')", name=op.f("ck_jobs_state")
        ),
        sa.CheckConstraint(
            "attempt >= 0 AND attempt <= max_attempts AND max_attempts BETWEEN 1 AND 100", name=op.f("ck_jobs_attempts")
        ),
        sa.CheckConstraint("progress IS NULL OR (progress >= 0 AND progress <= 1)", name=op.f("ck_jobs_progress")),
        sa.CheckConstraint(
            "(state = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name=op.f("ck_jobs_lease"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_jobs_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_due", ["tenant_id", "state", "queue", "run_at"], unique=False)
        batch_op.create_index("ix_jobs_leases", ["state", "lease_expires_at"], unique=False)
        batch_op.create_index("ix_jobs_listing", ["tenant_id", "created_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_listing")
        batch_op.drop_index("ix_jobs_leases")
        batch_op.drop_index("ix_jobs_due")
    op.drop_table("jobs")
