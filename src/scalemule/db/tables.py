"""Every table, declared once with SQLAlchemy Core.

Invariants live here as constraints with stable names (see ``db.errors``), so they hold on SQLite and
PostgreSQL alike under any concurrency. Every tenant-scoped table carries ``tenant_id``.
"""

from __future__ import annotations

import sqlalchemy as sa

from scalemule.db.types import UTCDateTime

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("slug", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", sa.String(40), nullable=True),
)

principals = sa.Table(
    "principals",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    # Users are identified by email; agents and services by name within their owning tenant.
    sa.Column("email", sa.String(320), nullable=True, unique=True),
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True),
    sa.Column("on_behalf_of", sa.String(40), sa.ForeignKey("principals.id"), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("tenant_id", "name"),
    sa.CheckConstraint("kind IN ('user', 'agent', 'service', 'operator')", name="kind"),
    sa.CheckConstraint(
        "(kind = 'user' AND email IS NOT NULL AND tenant_id IS NULL)"
        " OR (kind IN ('agent', 'service') AND tenant_id IS NOT NULL)"
        " OR kind = 'operator'",
        name="owner",
    ),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("principal_id", sa.String(40), sa.ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index(None, "principal_id"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("principal_id", sa.String(40), sa.ForeignKey("principals.id", ondelete="CASCADE"), nullable=False),
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("token_sha256", sa.LargeBinary(32), nullable=False, unique=True),
    # NULL scopes: everything the principal's role grants. A list: at most those permissions.
    sa.Column("scopes", sa.JSON(), nullable=True),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", sa.String(40), nullable=True),
    sa.Index(None, "principal_id"),
)

# One hash chain per tenant; chain '-' holds events that belong to no tenant.
audit_heads = sa.Table(
    "audit_heads",
    metadata,
    sa.Column("chain", sa.String(40), primary_key=True),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
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
