"""Transaction-scoped locks on names, for writers that must queue on something that may have no row yet.

Writers of one config key or one secret read its current version and write the next. Two that read
the same version would both try to write the same next one, and one would fail; a lock on the key's
name, held until commit, makes them take turns instead, so every blind write lands as its own
version. A row lock would do only where the row always exists: a key's first write, and the first
after a delete, have none.

On PostgreSQL the lock is an advisory transaction lock on a 64-bit id derived from the name (a
collision between two names only makes their writers queue together). On SQLite there is nothing to
do: a write transaction there starts with ``BEGIN IMMEDIATE`` and excludes every other writer already.
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa

from scalemule.db.engine import Connection

# Built once: constructing a statement costs more than running it.
_advisory_lock = sa.select(sa.func.pg_advisory_xact_lock(sa.bindparam("id", type_=sa.BigInteger())))


def lock_id(*name: str) -> int:
    """The signed 64-bit id of the lock on ``name`` (the same in every process and release)."""
    digest = hashlib.sha256(json.dumps(name).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def hold(conn: Connection, *name: str) -> None:
    """Take the lock on ``name`` (e.g. ``"config", tenant_id, env, key``) for the rest of the transaction,
    waiting while another transaction holds it.

    Read what the lock guards in statements after this one: on PostgreSQL a statement sees what was
    committed when it started, and only a later one sees the previous holder's writes.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(_advisory_lock, {"id": lock_id(*name)})
