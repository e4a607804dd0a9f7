"""Environments, versioned configuration and envelope-encrypted secrets."""

from __future__ import annotations

import sqlalchemy as sa

from scalemule.db.tables.base import metadata
from scalemule.db.types import UTCDateTime

environments = sa.Table(
    "environments",
    metadata,
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("protected", sa.Boolean(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", sa.String(40), nullable=True),
)

# The current value of each key; deleted keys have no row here.
config_entries = sa.Table(
    "config_entries",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("env", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(256), primary_key=True),
    sa.Column("value", sa.JSON(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("updated_by", sa.String(40), nullable=True),
    sa.ForeignKeyConstraint(["tenant_id", "env"], ["environments.tenant_id", "environments.name"], ondelete="CASCADE"),
)

# Every write of a key, deletes included. Writers of a key take turns (db/locks.py), each inserting
# the next version; the primary key keeps a version from being written twice whatever happens.
config_history = sa.Table(
    "config_history",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("env", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(256), primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True),
    sa.Column("value", sa.JSON(), nullable=True),
    sa.Column("deleted", sa.Boolean(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("by", sa.String(40), nullable=True),
    sa.ForeignKeyConstraint(["tenant_id", "env"], ["environments.tenant_id", "environments.name"], ondelete="CASCADE"),
)

secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("env", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("updated_by", sa.String(40), nullable=True),
    # How many versions to keep (NULL: the server's secret_versions_kept); older ones are deleted.
    sa.Column("max_versions", sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(["tenant_id", "env"], ["environments.tenant_id", "environments.name"], ondelete="CASCADE"),
    sa.CheckConstraint("max_versions IS NULL OR max_versions BETWEEN 1 AND 100", name="max_versions"),
)

# One row per kept version: the payload under a per-version data key, the data key wrapped by a
# versioned master key. Both AES-GCM operations bind tenant, environment, name and version.
secret_versions = sa.Table(
    "secret_versions",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("env", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True),
    # NULL once the version is destroyed: payload and data key are gone, the metadata stays.
    sa.Column("ciphertext", sa.LargeBinary(), nullable=True),
    sa.Column("nonce", sa.LargeBinary(12), nullable=True),
    sa.Column("wrapped_key", sa.LargeBinary(48), nullable=True),
    sa.Column("key_nonce", sa.LargeBinary(12), nullable=True),
    sa.Column("master_key_version", sa.Integer(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", sa.String(40), nullable=True),
    sa.Column("destroyed_at", UTCDateTime(), nullable=True),
    sa.Column("destroyed_by", sa.String(40), nullable=True),
    # When set, the version is destroyed once this time has passed (secrets_rotate's grace period).
    sa.Column("destroy_after", UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(
        ["tenant_id", "env", "name"], ["secrets.tenant_id", "secrets.env", "secrets.name"], ondelete="CASCADE"
    ),
    sa.Index(None, "master_key_version"),
    sa.Index(None, "destroy_after"),
    sa.CheckConstraint(
        "(destroyed_at IS NULL) = (ciphertext IS NOT NULL AND wrapped_key IS NOT NULL)", name="destroyed"
    ),
)
