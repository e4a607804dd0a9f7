"""Tenants, principals, memberships, invitations and API keys."""

from __future__ import annotations

import sqlalchemy as sa

from scalemule.db.tables.base import metadata
from scalemule.db.types import UTCDateTime

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    # Not unique: a slug names a tenant among those a principal belongs to (memberships.slug), so
    # creating one never reveals which slugs other people use.
    sa.Column("slug", sa.String(64), nullable=False),
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
    # The tenant's slug, copied (slugs never change): unique per principal, so a slug names exactly
    # one of the tenants a principal belongs to.
    sa.Column("slug", sa.String(64), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("principal_id", "slug"),
)

# Pending invitations only: answering or cancelling one deletes it (the audit log keeps the story),
# so the unique constraint allows one pending invitation per person and tenant.
invitations = sa.Table(
    "invitations",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("principal_id", sa.String(40), sa.ForeignKey("principals.id", ondelete="CASCADE"), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("invited_by", sa.String(40), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("tenant_id", "principal_id"),
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
    # The key that minted this one (NULL for keys made by init or the operator). Revoking a key
    # revokes its descendants; see core.identity.revoke_key.
    sa.Column("parent_key_id", sa.String(40), sa.ForeignKey("api_keys.id"), nullable=True),
    sa.Index(None, "principal_id"),
    sa.Index(None, "parent_key_id"),
)

# A permission given on named targets (core.access.Grant): narrower than any role. Revoking deletes
# the row (the audit log keeps the story); every call reads the grants it may use afresh.
grants = sa.Table(
    "grants",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("principal_id", sa.String(40), sa.ForeignKey("principals.id", ondelete="CASCADE"), nullable=False),
    sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=True),
    sa.Column("permission", sa.String(64), nullable=False),
    sa.Column("pattern", sa.String(300), nullable=False),
    sa.Column("granted_by", sa.String(40), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index("ix_grants_holder", "tenant_id", "principal_id", "permission"),
)
