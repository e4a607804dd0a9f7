"""The audit log, its per-chain heads, and idempotency records of creates."""

from __future__ import annotations

import sqlalchemy as sa

from scalemule.db.tables.base import metadata
from scalemule.db.types import UTCDateTime

# One hash chain per tenant; chain '-' holds events that belong to no tenant.
audit_heads = sa.Table(
    "audit_heads",
    metadata,
    sa.Column("chain", sa.String(40), primary_key=True),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # The last signed checkpoint of the chain: appenders decide from these whether one is due.
    sa.Column("checkpoint_seq", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("checkpoint_at", UTCDateTime(), nullable=True),
)

# Signed statements "chain C had head hash H at sequence number S", written in the transaction of the
# events they cover and copied to the blob store as digest objects (docs/audit.md, Checkpoints).
audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("chain", sa.String(40), primary_key=True),
    sa.Column("seq", sa.BigInteger(), primary_key=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),
    # Base64 of the 64-byte Ed25519 signature over the checkpoint's canonical bytes.
    sa.Column("signature", sa.String(88), nullable=False),
)

# The columns audit_query filters on by equality (its actor filter matches actor_id or actor_name).
AUDIT_QUERY_COLUMNS = (
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

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("chain", sa.String(40), nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("tenant_id", sa.String(40), nullable=True),
    sa.Column("actor_id", sa.String(40), nullable=True),
    sa.Column("actor_kind", sa.String(16), nullable=True),
    sa.Column("actor_name", sa.String(320), nullable=True),
    sa.Column("key_id", sa.String(40), nullable=True),
    sa.Column("on_behalf_of", sa.String(40), nullable=True),
    sa.Column("client_name", sa.String(200), nullable=True),
    sa.Column("client_version", sa.String(100), nullable=True),
    sa.Column("transport", sa.String(16), nullable=False),
    sa.Column("session_id", sa.String(100), nullable=True),
    sa.Column("request_id", sa.String(100), nullable=True),
    sa.Column("operation", sa.String(64), nullable=False),
    sa.Column("permission", sa.String(64), nullable=True),
    sa.Column("target", sa.String(1100), nullable=True),
    sa.Column("args", sa.JSON(), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(32), nullable=True),
    sa.Column("duration_ms", sa.Float(), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.UniqueConstraint("chain", "seq"),
    sa.CheckConstraint("outcome IN ('ok', 'error', 'denied', 'cancelled')", name="outcome"),
    # One index per audit_query filter, (chain, column, seq): equal chain and column leave the entries
    # in sequence order, so the newest matches are read backwards from the end of their range and a
    # page costs the same at any log size, however rare the value. Time windows use (chain, at, seq).
    # Every index is a write per event; docs/audit.md gives their cost.
    *(sa.Index(None, "chain", column, "seq") for column in AUDIT_QUERY_COLUMNS),
    sa.Index(None, "chain", "at", "seq"),
)

# Calls recorded in aggregate rather than one event each (refused credentials, idle polls): one row
# per chain, minute and kind of call, folded into a single audit event once its minute has closed.
audit_rollups = sa.Table(
    "audit_rollups",
    metadata,
    sa.Column("chain", sa.String(40), primary_key=True),
    sa.Column("window_start", UTCDateTime(), primary_key=True),
    # SHA-256 of what tells such calls apart: operation, outcome, error code, actor, key and source.
    sa.Column("bucket", sa.String(64), primary_key=True),
    # The first such call's event (its row, less id, sequence and hashes): the folded event's template.
    sa.Column("event", sa.JSON(), nullable=False),
    sa.Column("count", sa.BigInteger(), nullable=False),
    sa.Column("first_at", UTCDateTime(), nullable=False),
    sa.Column("last_at", UTCDateTime(), nullable=False),
    sa.Index(None, "window_start"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    # The tenant id for tenant-scoped operations, else the caller's principal id.
    sa.Column("scope", sa.String(40), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("operation", sa.String(64), nullable=False),
    sa.Column("request_sha256", sa.String(64), nullable=False),
    sa.Column("result", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)
