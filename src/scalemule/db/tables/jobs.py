"""Durable background jobs: one row per job, moved between states by core.job_states."""

from __future__ import annotations

import sqlalchemy as sa

from scalemule.db.tables.base import metadata
from scalemule.db.types import UTCDateTime

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("queue", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(128), nullable=False),
    # Any JSON value (null included, stored as JSON null).
    sa.Column("payload", sa.JSON(none_as_null=False), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer(), nullable=False),
    # Attempts started so far: a claim counts one, so a rescued or failed attempt stays counted.
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("max_attempts", sa.Integer(), nullable=False),
    sa.Column("timeout_seconds", sa.Integer(), nullable=True),
    # When the job is next due (queued or failed), or when it was last claimed (running).
    sa.Column("run_at", UTCDateTime(), nullable=False),
    # Fencing: every worker write matches (id, lease_token, state='running').
    sa.Column("lease_token", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
    sa.Column("worker_id", sa.String(40), nullable=True),
    sa.Column("cancel_requested", sa.Boolean(), nullable=False),
    sa.Column("progress", sa.Float(), nullable=True),
    sa.Column("progress_message", sa.String(500), nullable=True),
    sa.Column("result", sa.JSON(none_as_null=False), nullable=True),
    sa.Column("last_error", sa.String(2000), nullable=True),
    sa.Column("created_by", sa.String(40), nullable=True),
    sa.Column("created_key", sa.String(40), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.CheckConstraint(
        "state IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')",
        name="state",
    ),
    sa.CheckConstraint("attempt >= 0 AND attempt <= max_attempts AND max_attempts BETWEEN 1 AND 100", name="attempts"),
    sa.CheckConstraint("progress IS NULL OR (progress >= 0 AND progress <= 1)", name="progress"),
    # A running job always has a lease, and only a running job has one.
    sa.CheckConstraint(
        "(state = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)", name="lease"
    ),
    # Rescue: running jobs by lease expiry, across tenants.
    sa.Index("ix_jobs_leases", "state", "lease_expires_at"),
    # Lists: a tenant's jobs newest first, and for each filter its matches newest first, so a rare
    # state, kind or queue among many finished jobs is found without reading the others.
    sa.Index("ix_jobs_listing", "tenant_id", "created_at", "id"),
    sa.Index("ix_jobs_listing_state", "tenant_id", "state", "created_at", "id"),
    sa.Index("ix_jobs_listing_kind", "tenant_id", "kind", "created_at", "id"),
    sa.Index("ix_jobs_listing_queue", "tenant_id", "queue", "created_at", "id"),
    # Server tasks (core.jobs.SERVER_QUEUE) due across tenants: a few rows among all jobs, polled by
    # every server process, so the index holds only them.
    sa.Index(
        "ix_jobs_server_due",
        "state",
        "run_at",
        sqlite_where=sa.text("queue = '_server'"),
        postgresql_where=sa.text("queue = '_server'"),
    ),
)

# The jobs a claim may take (core.job_states.CLAIMABLE), with the states written into the SQL rather
# than bound: a planner uses a partial index only when it sees that the query's rows are the index's.
CLAIMABLE_ROWS = jobs.c.state.in_([sa.literal_column("'queued'"), sa.literal_column("'failed'")])

# Claims (and workers' probes): a tenant's claimable jobs in the order they are claimed, so a claim
# reads the first due entry instead of sorting every waiting job; it holds no finished job.
sa.Index(
    "ix_jobs_claim",
    jobs.c.tenant_id,
    jobs.c.priority.desc(),
    jobs.c.run_at,
    jobs.c.id,
    sqlite_where=CLAIMABLE_ROWS,
    postgresql_where=CLAIMABLE_ROWS,
)
