"""protected environments become a permission

Writing into a protected environment needed the owner or admin role; it now needs the permission
``envs:write_protected``, which both roles carry. Keys minted with explicit scopes by owners and admins
before this revision listed every permission of their role then: those holding ``config:write`` and
``members:manage`` (a combination only owners and admins could give) keep the reach they had.

Revision ID: 0008
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0005"
branch_labels = None
depends_on = None

_PERMISSION = "envs:write_protected"
_keys = sa.table("api_keys", sa.column("id", sa.String()), sa.column("scopes", sa.JSON()))


def upgrade() -> None:
    connection = op.get_bind()
    for key_id, scopes in connection.execute(sa.select(_keys.c.id, _keys.c.scopes).where(_keys.c.scopes.is_not(None))):
        # A JSON null (no scopes: the key follows its role) reads as None.
        if scopes and "config:write" in scopes and "members:manage" in scopes and _PERMISSION not in scopes:
            widened = sorted([*scopes, _PERMISSION])
            connection.execute(_keys.update().where(_keys.c.id == key_id).values(scopes=widened))


def downgrade() -> None:
    connection = op.get_bind()
    for key_id, scopes in connection.execute(sa.select(_keys.c.id, _keys.c.scopes).where(_keys.c.scopes.is_not(None))):
        if scopes and _PERMISSION in scopes:
            connection.execute(
                _keys.update().where(_keys.c.id == key_id).values(scopes=[s for s in scopes if s != _PERMISSION])
            )
