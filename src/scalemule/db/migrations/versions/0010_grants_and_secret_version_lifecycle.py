"""grants on named secrets, and secret versions that can be destroyed

A grant gives one permission (``secrets:reveal``) on the secrets an ``env/name`` pattern names, to a
principal or one of its keys. A secret version can be destroyed: its ciphertext and wrapped data key
are removed and its metadata kept, marked destroyed; ``destroy_after`` schedules that. A secret may
keep its own number of versions (``max_versions``).

Revision ID: 0010
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scalemule.db.types

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_PAYLOAD = (("ciphertext", None), ("nonce", 12), ("wrapped_key", 48), ("key_nonce", 12))


def upgrade() -> None:
    op.create_table(
        "grants",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("principal_id", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("permission", sa.String(length=64), nullable=False),
        sa.Column("pattern", sa.String(length=300), nullable=False),
        sa.Column("granted_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name=op.f("fk_grants_key_id_api_keys"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["principal_id"], ["principals.id"], name=op.f("fk_grants_principal_id_principals"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_grants_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_grants")),
    )
    op.create_index("ix_grants_holder", "grants", ["tenant_id", "principal_id", "permission"])
    with op.batch_alter_table("secrets") as batch:
        batch.add_column(sa.Column("max_versions", sa.Integer(), nullable=True))
        batch.create_check_constraint(
            op.f("ck_secrets_max_versions"), "max_versions IS NULL OR max_versions BETWEEN 1 AND 100"
        )
    with op.batch_alter_table("secret_versions") as batch:
        for name, size in _PAYLOAD:
            batch.alter_column(name, existing_type=sa.LargeBinary(size), nullable=True)
        batch.add_column(sa.Column("destroyed_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("destroyed_by", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("destroy_after", scalemule.db.types.UTCDateTime(timezone=True), nullable=True))
        batch.create_index(op.f("ix_secret_versions_destroy_after"), ["destroy_after"])
        batch.create_check_constraint(
            op.f("ck_secret_versions_destroyed"),
            "(destroyed_at IS NULL) = (ciphertext IS NOT NULL AND wrapped_key IS NOT NULL)",
        )


def downgrade() -> None:
    # Destroyed versions have no payload to restore: they go.
    op.execute("DELETE FROM secret_versions WHERE destroyed_at IS NOT NULL")
    with op.batch_alter_table("secret_versions") as batch:
        batch.drop_constraint("ck_secret_versions_destroyed", type_="check")
        batch.drop_index(op.f("ix_secret_versions_destroy_after"))
        batch.drop_column("destroy_after")
        batch.drop_column("destroyed_by")
        batch.drop_column("destroyed_at")
        for name, size in _PAYLOAD:
            batch.alter_column(name, existing_type=sa.LargeBinary(size), nullable=False)
    with op.batch_alter_table("secrets") as batch:
        batch.drop_constraint("ck_secrets_max_versions", type_="check")
        batch.drop_column("max_versions")
    op.drop_index("ix_grants_holder", table_name="grants")
    op.drop_table("grants")
