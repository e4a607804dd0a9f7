"""Object storage: each object's metadata (the index listings read) and each tenant's usage.

The bytes live in the blob store under ``blob_ref``; a blob no row references is garbage for the sweep.
"""

from __future__ import annotations

import sqlalchemy as sa

from scalemule.db.tables.base import metadata
from scalemule.db.types import CodepointString, UTCDateTime

storage_objects = sa.Table(
    "storage_objects",
    metadata,
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    # Code point order on every dialect: listings page through keys by range.
    sa.Column("key", CodepointString(1024), primary_key=True),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("content_type", sa.String(255), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    # The raw SHA-256 of each 4 MiB chunk, concatenated; NULL for one-chunk objects (it is sha256).
    sa.Column("chunk_digests", sa.LargeBinary(), nullable=True),
    sa.Column("etag", sa.String(32), nullable=False),
    sa.Column("user_metadata", sa.JSON(), nullable=False),
    sa.Column("blob_ref", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", sa.String(40), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("updated_by", sa.String(40), nullable=True),
    sa.CheckConstraint("size >= 0", name="size"),
)

# Bytes and objects a tenant stores, kept with every write. Its row is also the lock that orders a
# tenant's concurrent writes, so the quota holds exactly.
storage_usage = sa.Table(
    "storage_usage",
    metadata,
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("bytes", sa.BigInteger(), nullable=False),
    sa.Column("objects", sa.BigInteger(), nullable=False),
    sa.CheckConstraint("bytes >= 0 AND objects >= 0", name="non_negative"),
)

# Signed PUT URLs that were used: each uploads once. A row is kept until its URL expires, after which
# the URL is refused anyway and the sweep drops the row.
signed_url_uses = sa.Table(
    "signed_url_uses",
    metadata,
    # The random nonce the URL's token carries.
    sa.Column("nonce", sa.String(32), primary_key=True),
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("used_at", UTCDateTime(), nullable=False),
    sa.Index(None, "expires_at"),
)
