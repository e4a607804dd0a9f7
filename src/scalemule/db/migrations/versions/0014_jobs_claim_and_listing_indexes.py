"""jobs: claims read the waiting jobs in claim order; listings filtered by state, kind or queue use an index

``ix_jobs_due`` (tenant, state, queue, run_at) found a tenant's waiting jobs, but a claim then sorted
all of them by priority and age to take the first: a cost that grew with the queue's depth. The partial
index ``ix_jobs_claim`` holds only claimable jobs (queued or failed), in the order claims take them,
so a claim reads its first due entry. ``jobs_list`` filtered by a state, kind or queue walked all of
the tenant's jobs newest first to find its matches; one ``(tenant, column, created_at, id)`` index per
filter holds each value's jobs newest first (docs/jobs.md, Limits and costs).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# Written out rather than imported from the tables: a migration stays what it was when released.
_CLAIMABLE = sa.text("state IN ('queued', 'failed')")
_LISTINGS = {
    f"ix_jobs_listing_{column}": ["tenant_id", column, "created_at", "id"] for column in ("state", "kind", "queue")
}


def upgrade() -> None:
    op.create_index(
        "ix_jobs_claim",
        "jobs",
        ["tenant_id", sa.text("priority DESC"), "run_at", "id"],
        sqlite_where=_CLAIMABLE,
        postgresql_where=_CLAIMABLE,
    )
    op.drop_index("ix_jobs_due", table_name="jobs")
    for name, columns in _LISTINGS.items():
        op.create_index(name, "jobs", columns)


def downgrade() -> None:
    for name in reversed(list(_LISTINGS)):
        op.drop_index(name, table_name="jobs")
    op.create_index("ix_jobs_due", "jobs", ["tenant_id", "state", "queue", "run_at"])
    op.drop_index("ix_jobs_claim", table_name="jobs")
