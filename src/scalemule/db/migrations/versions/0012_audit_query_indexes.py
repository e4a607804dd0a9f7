"""indexes that serve every audit_query filter

``audit_events`` had only its primary key and ``(chain, seq)``, so a filter matching few or no events
read the whole chain. One ``(chain, column, seq)`` index per filter column keeps each value's events in
sequence order, and ``(chain, at, seq)`` serves time windows (docs/audit.md, Indexes).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-14
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Written out rather than imported from the tables: a migration stays what it was when released.
_INDEXES = {
    f"ix_audit_events_chain_{column}_seq": ["chain", column, "seq"]
    for column in (
        "operation",
        "outcome",
        "actor_id",
        "actor_name",
        "target",
        "permission",
        "client_name",
        "session_id",
        "key_id",
    )
} | {"ix_audit_events_chain_at_seq": ["chain", "at", "seq"]}


def upgrade() -> None:
    for name, columns in _INDEXES.items():
        op.create_index(name, "audit_events", columns)


def downgrade() -> None:
    for name in reversed(list(_INDEXES)):
        op.drop_index(name, table_name="audit_events")
