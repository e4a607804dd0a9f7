"""protected environments and invitations become permissions

Writing into a protected environment needed the owner or admin role; it now needs the permission
``envs:write_protected``, which both roles carry. Answering invitations needed a key not bound to a
tenant; it now needs ``tenants:join``, which users hold by their kind. Keys minted with explicit scopes
before this revision listed every permission their principal could give then, so they keep the reach
they had: those holding ``config:write`` and ``members:manage`` (a combination only owners and admins
could give) gain ``envs:write_protected``, and those holding ``tenants:create`` gain ``tenants:join``.

Revision ID: 0008
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# A permission added, and the permissions whose holders had its reach before it existed.
_ADDED = {"envs:write_protected": {"config:write", "members:manage"}, "tenants:join": {"tenants:create"}}
_keys = sa.table("api_keys", sa.column("id", sa.String()), sa.column("scopes", sa.JSON()))


def upgrade() -> None:
    connection = op.get_bind()
    for key_id, scopes in connection.execute(sa.select(_keys.c.id, _keys.c.scopes)).all():
        # A JSON null (no scopes: the key follows its role) reads as None.
        if not scopes:
            continue
        added = {name for name, before in _ADDED.items() if before <= set(scopes)}
        if added - set(scopes):
            connection.execute(_keys.update().where(_keys.c.id == key_id).values(scopes=sorted(set(scopes) | added)))


def downgrade() -> None:
    connection = op.get_bind()
    for key_id, scopes in connection.execute(sa.select(_keys.c.id, _keys.c.scopes)).all():
        if scopes and set(scopes) & set(_ADDED):
            kept = [s for s in scopes if s not in _ADDED]
            connection.execute(_keys.update().where(_keys.c.id == key_id).values(scopes=kept))
