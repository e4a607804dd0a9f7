"""key lineage, invitations, tenant slugs unique per member

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 05:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scalemule.db.types

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_key_id", sa.String(length=40), nullable=True))
        batch_op.create_index(batch_op.f("ix_api_keys_parent_key_id"), ["parent_key_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_api_keys_parent_key_id_api_keys"), "api_keys", ["parent_key_id"], ["id"]
        )

    # A slug becomes a name among the tenants a principal belongs to: copied onto memberships (slugs
    # never change), unique there, no longer unique across the store.
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slug", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE memberships SET slug = (SELECT tenants.slug FROM tenants WHERE tenants.id = memberships.tenant_id)"
    )
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.alter_column("slug", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_index(batch_op.f("ix_memberships_principal_id"))
        batch_op.create_unique_constraint(batch_op.f("uq_memberships_principal_id_slug"), ["principal_id", "slug"])
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_tenants_slug"), type_="unique")

    op.create_table(
        "invitations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("principal_id", sa.String(length=40), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("invited_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", scalemule.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_invitations_principal_id_principals"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_invitations_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
        sa.UniqueConstraint("tenant_id", "principal_id", name=op.f("uq_invitations_tenant_id_principal_id")),
    )
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invitations_principal_id"), ["principal_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("invitations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invitations_principal_id"))
    op.drop_table("invitations")
    # Fails if two tenants now share a slug: rename one before downgrading.
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f("uq_tenants_slug"), ["slug"])
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_memberships_principal_id_slug"), type_="unique")
        batch_op.create_index(batch_op.f("ix_memberships_principal_id"), ["principal_id"], unique=False)
        batch_op.drop_column("slug")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_api_keys_parent_key_id_api_keys"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_api_keys_parent_key_id"))
        batch_op.drop_column("parent_key_id")
