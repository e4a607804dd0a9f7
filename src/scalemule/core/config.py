"""Environments and versioned configuration.

Each write of a key inserts the next version into ``config_history``. Writers of one key take turns
on a lock on its name (``db.locks``), so a blind write always lands as its own version and an
``expected_version`` is checked against the version that is current when the write happens.
``config_entries`` holds the current value of every live key for listing and diffing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scalemule.core.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from scalemule.core.ids import utcnow
from scalemule.db import locks
from scalemule.db.engine import Connection
from scalemule.db.errors import constraint_errors
from scalemule.db.tables import config_entries, config_history, environments

DEFAULT_ENVIRONMENTS = (("dev", False), ("staging", False), ("prod", True))
ENV_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
KEY_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,255}$"
MAX_VALUE_BYTES = 64 * 1024
_ENV = re.compile(ENV_PATTERN)
_KEY = re.compile(KEY_PATTERN)


@dataclass(frozen=True)
class Environment:
    """A tenant's environment."""

    name: str
    protected: bool
    created_at: datetime


@dataclass(frozen=True)
class Entry:
    """One version of a config key (``deleted`` marks a delete in the history)."""

    key: str
    value: Any
    version: int
    at: datetime
    by: str | None
    deleted: bool = False


def check_env_name(name: str) -> str:
    """Return ``name`` if it is a valid environment name.

    Raises:
        InvalidArgument: not 1-32 lowercase letters, digits and hyphens starting with a letter.
    """
    if not _ENV.match(name):
        raise InvalidArgument(
            f"environment name {name[:40]!r} is not valid",
            hint="Use 1-32 lowercase letters, digits and hyphens, starting with a letter (e.g. 'qa').",
        )
    return name


def check_key(key: str, *, what: str = "config key") -> str:
    """Return ``key`` if it is a valid config key or secret name.

    Raises:
        InvalidArgument: empty, over 256 characters, or characters outside letters, digits and ``_.:/-``.
    """
    if not _KEY.match(key):
        shown = key[:40].encode("unicode_escape").decode()
        raise InvalidArgument(
            f"{what} {shown!r}{'…' if len(key) > 40 else ''} is not valid",
            hint="Use 1-256 characters: letters, digits and _ . : / - (not starting with a symbol other than _).",
        )
    return key


def check_value(value: Any) -> str:
    """Return the value's canonical JSON text.

    Raises:
        InvalidArgument: not representable as JSON (NaN, infinity) or larger than 64 KiB.
    """
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        raise InvalidArgument(
            "the value is not valid JSON (NaN and infinity are not allowed)",
            hint="Pass a JSON value: string, number, boolean, null, array or object.",
        ) from None
    if len(text.encode()) > MAX_VALUE_BYTES:
        raise InvalidArgument(
            f"the value is {len(text.encode())} bytes of JSON; the limit is {MAX_VALUE_BYTES}",
            hint="Store large data in object storage (storage_put_object) and keep its key in config.",
        )
    return text


async def create_defaults(conn: Connection, tenant_id: str, created_by: str | None) -> None:
    """Create dev, staging and prod (protected) for a new tenant."""
    now = utcnow()
    await conn.execute(
        environments.insert(),
        [
            {"tenant_id": tenant_id, "name": n, "protected": p, "created_at": now, "created_by": created_by}
            for n, p in DEFAULT_ENVIRONMENTS
        ],
    )


async def create_environment(
    conn: Connection, tenant_id: str, name: str, *, protected: bool, created_by: str | None
) -> Environment:
    """Create an environment.

    Raises:
        AlreadyExists: the name is taken in this tenant.
    """
    env = Environment(check_env_name(name), protected, utcnow())
    async with constraint_errors(
        {"pk_environments": lambda: AlreadyExists(f"environment {name!r} already exists", hint="See envs_list.")}
    ):
        await conn.execute(
            environments.insert().values(
                tenant_id=tenant_id, name=name, protected=protected, created_at=env.created_at, created_by=created_by
            )
        )
    return env


async def list_environments(conn: Connection, tenant_id: str) -> list[Environment]:
    """The tenant's environments by name."""
    query = sa.select(environments).where(environments.c.tenant_id == tenant_id).order_by(environments.c.name)
    return [Environment(r.name, r.protected, r.created_at) for r in await conn.execute(query)]


# Built once: constructing a statement costs more than running it on SQLite (docs/scaling.md).
_environment_query = sa.select(environments).where(
    environments.c.tenant_id == sa.bindparam("tenant_id"), environments.c.name == sa.bindparam("name")
)


async def get_environment(conn: Connection, tenant_id: str, name: str) -> Environment:
    """One environment.

    Raises:
        NotFound: no such environment in the tenant.
    """
    row = (await conn.execute(_environment_query, {"tenant_id": tenant_id, "name": name})).first()
    if row is None:
        known = ", ".join(e.name for e in await list_environments(conn, tenant_id))
        raise NotFound(f"no environment {name[:40]!r} in this tenant", hint=f"Environments: {known}. Or envs_create.")
    return Environment(row.name, row.protected, row.created_at)


def _entry(row: Any) -> Entry:
    return Entry(row.key, row.value, row.version, row.updated_at, row.updated_by)


def _of_key(table: sa.Table) -> tuple[sa.ColumnElement[bool], ...]:
    # Parameter names apart from the column names, which an UPDATE's SET clause takes for its own.
    return (
        table.c.tenant_id == sa.bindparam("k_tenant"),
        table.c.env == sa.bindparam("k_env"),
        table.c.key == sa.bindparam("k_key"),
    )


# Built once: constructing a statement costs more than running it on SQLite.
_current_query = sa.select(config_entries).where(*_of_key(config_entries))
_version_query = sa.select(config_history).where(
    *_of_key(config_history), config_history.c.version == sa.bindparam("v")
)
# (live version, highest version ever written) in one statement: on PostgreSQL two reads could
# straddle a concurrent commit and pair an old live version with a new top, letting a stale
# writer through.
_versions_query = sa.select(
    sa.select(config_entries.c.version).where(*_of_key(config_entries)).scalar_subquery().label("live"),
    sa.select(sa.func.max(config_history.c.version)).where(*_of_key(config_history)).scalar_subquery().label("top"),
)
_insert_history = config_history.insert()
_insert_entry = config_entries.insert()
_update_entry = config_entries.update().where(*_of_key(config_entries))
_delete_entry = config_entries.delete().where(*_of_key(config_entries))


def _key_params(tenant_id: str, env: str, key: str) -> dict[str, str]:
    return {"k_tenant": tenant_id, "k_env": env, "k_key": key}


async def get(conn: Connection, tenant_id: str, env: str, key: str, version: int | None = None) -> Entry:
    """The current value of ``key``, or the value it had at ``version``.

    Raises:
        NotFound: no such key (or version) in the environment.
    """
    if version is None:
        row = (await conn.execute(_current_query, _key_params(tenant_id, env, key))).first()
        if row is None:
            await get_environment(conn, tenant_id, env)  # a missing environment is the better answer
            raise NotFound(f"no config key {key!r} in {env!r}", hint="List keys with config_list.")
        return _entry(row)
    row = (await conn.execute(_version_query, {**_key_params(tenant_id, env, key), "v": version})).first()
    if row is None or row.deleted:
        await get_environment(conn, tenant_id, env)
        raise NotFound(f"config key {key!r} has no version {version} in {env!r}", hint="See config_history.")
    return Entry(row.key, row.value, row.version, row.at, row.by)


async def _current_version(conn: Connection, tenant_id: str, env: str, key: str) -> tuple[int, int]:
    """(live version or 0 when absent, highest version ever written), read in one snapshot."""
    row = (await conn.execute(_versions_query, _key_params(tenant_id, env, key))).one()
    return int(row.live or 0), int(row.top or 0)


async def _write(
    conn: Connection,
    tenant_id: str,
    env: str,
    key: str,
    value: Any,
    *,
    expected_version: int | None,
    by: str | None,
    delete: bool,
) -> Entry:
    await locks.hold(conn, "config", tenant_id, env, key)
    live, top = await _current_version(conn, tenant_id, env, key)
    if expected_version is not None and expected_version != live:
        state = f"its current version is {live}" if live else "it does not exist"
        raise Conflict(
            f"config key {key!r} in {env!r} changed: expected version {expected_version}, {state}",
            hint="Read it again with config_get and retry with the current version.",
        )
    if delete and not live:
        raise NotFound(f"no config key {key!r} in {env!r}", hint="List keys with config_list.")
    now, version = utcnow(), top + 1
    # Writers holding the key's lock never collide here; the primary key still refuses a second copy
    # of a version from a writer that does not take it (a replica of an older release).
    async with constraint_errors(
        {
            "pk_config_history": lambda: Conflict(
                f"config key {key!r} in {env!r} was changed concurrently",
                hint="Read it again with config_get and retry.",
            )
        }
    ):
        await conn.execute(
            _insert_history,
            {
                "tenant_id": tenant_id,
                "env": env,
                "key": key,
                "version": version,
                "value": None if delete else value,
                "deleted": delete,
                "at": now,
                "by": by,
            },
        )
    where = _key_params(tenant_id, env, key)
    current = {"value": value, "version": version, "updated_at": now, "updated_by": by}
    if delete:
        await conn.execute(_delete_entry, where)
    elif live:
        await conn.execute(_update_entry, {**where, **current})
    else:
        await conn.execute(_insert_entry, {"tenant_id": tenant_id, "env": env, "key": key, **current})
    return Entry(key, None if delete else value, version, now, by, deleted=delete)


async def set_value(
    conn: Connection,
    tenant_id: str,
    env: str,
    key: str,
    value: Any,
    *,
    expected_version: int | None,
    by: str | None,
) -> Entry:
    """Write a new version of ``key``.

    Without ``expected_version`` the write always lands, as the next version; concurrent writers of
    the key take turns.

    Raises:
        InvalidArgument: bad key or value.
        Conflict: ``expected_version`` is not the current version when the write happens.
    """
    check_key(key)
    check_value(value)
    return await _write(conn, tenant_id, env, key, value, expected_version=expected_version, by=by, delete=False)


async def delete(
    conn: Connection, tenant_id: str, env: str, key: str, *, expected_version: int | None, by: str | None
) -> Entry:
    """Delete ``key`` (recorded as a version in its history).

    Raises:
        NotFound: the key does not exist.
        Conflict: ``expected_version`` is stale.
    """
    return await _write(conn, tenant_id, env, key, None, expected_version=expected_version, by=by, delete=True)


async def list_entries(
    conn: Connection, tenant_id: str, env: str, *, prefix: str = "", after: str | None = None, limit: int = 1000
) -> list[Entry]:
    """Live keys of the environment, ordered by key."""
    c = config_entries.c
    query = sa.select(config_entries).where(c.tenant_id == tenant_id, c.env == env).order_by(c.key).limit(limit)
    if prefix:
        query = query.where(c.key >= prefix, c.key < prefix + "\U0010ffff")
    if after is not None:
        query = query.where(c.key > after)
    return [_entry(r) for r in await conn.execute(query)]


async def history(
    conn: Connection, tenant_id: str, env: str, key: str, *, before: int | None, limit: int
) -> list[Entry]:
    """Versions of ``key``, newest first."""
    h = config_history.c
    query = (
        sa.select(config_history)
        .where(h.tenant_id == tenant_id, h.env == env, h.key == key)
        .order_by(h.version.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(h.version < before)
    return [Entry(r.key, r.value, r.version, r.at, r.by, r.deleted) for r in await conn.execute(query)]
