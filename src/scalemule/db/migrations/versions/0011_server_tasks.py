"""jobs the server runs itself: an index of the due ones

Operations a task-aware client calls as MCP Tasks (``audit_verify``) are queued as jobs in the reserved
queue ``_server`` and run by whichever server process claims them, across tenants. The partial index
holds only those rows, so every server's poll stays cheap however many jobs the tenants have.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_server_due",
        "jobs",
        ["state", "run_at"],
        unique=False,
        sqlite_where=sa.text("queue = '_server'"),
        postgresql_where=sa.text("queue = '_server'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_server_due", table_name="jobs")
