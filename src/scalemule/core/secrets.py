"""Secrets: envelope-encrypted, versioned, listed by metadata only, revealed on purpose."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scalemule.core import crypto, unit_of_work
from scalemule.core.config import check_key, get_environment
from scalemule.core.crypto import Keyring, Sealed
from scalemule.core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from scalemule.core.ids import utcnow
from scalemule.db import locks
from scalemule.db.engine import Connection, Database
from scalemule.db.errors import constraint_errors
from scalemule.db.tables import secret_versions, secrets

MAX_SECRET_BYTES = 64 * 1024
DEFAULT_VERSIONS_KEPT = 10


@dataclass(frozen=True)
class SecretInfo:
    """What may be known about a secret without reading it."""

    name: str
    version: int
    updated_at: datetime
    updated_by: str | None
    versions_kept: int = 1
    max_versions: int | None = None


@dataclass(frozen=True)
class VersionInfo:
    """One kept version of a secret: when and by whom it was set, and destroyed (never the value)."""

    version: int
    created_at: datetime
    created_by: str | None
    destroyed_at: datetime | None
    destroyed_by: str | None
    destroy_after: datetime | None


# What destroying a version clears: the payload and its wrapped data key (with their nonces).
_DESTROYED = {"ciphertext": None, "nonce": None, "wrapped_key": None, "key_nonce": None}
MAX_VERSIONS = 100


def _aad(tenant_id: str, env: str, name: str, version: int) -> bytes:
    return crypto.associated_data(tenant_id, env, name, version)


def check_secret_value(value: str) -> bytes:
    """The value's bytes.

    Raises:
        InvalidArgument: empty, or larger than 64 KiB.
    """
    data = value.encode()
    if not data or len(data) > MAX_SECRET_BYTES:
        raise InvalidArgument(
            f"a secret value must be 1 to {MAX_SECRET_BYTES} bytes (got {len(data)})",
            hint="Store large files in object storage and keep only credentials in secrets.",
        )
    return data


def _of_name(table: sa.Table) -> tuple[sa.ColumnElement[bool], ...]:
    # Parameter names apart from the column names, which an UPDATE's SET clause takes for its own.
    return (
        table.c.tenant_id == sa.bindparam("s_tenant"),
        table.c.env == sa.bindparam("s_env"),
        table.c.name == sa.bindparam("s_name"),
    )


def _name_params(tenant_id: str, env: str, name: str) -> dict[str, Any]:
    return {"s_tenant": tenant_id, "s_env": env, "s_name": name}


# Built once: constructing a statement costs more than running it on SQLite (docs/scaling.md).
_head_query = sa.select(secrets).where(*_of_name(secrets))
_insert_head = secrets.insert()
# Moves only the version read: a writer that skipped the lock cannot be overwritten.
_advance_head = secrets.update().where(*_of_name(secrets), secrets.c.version == sa.bindparam("s_current"))
_insert_version = secret_versions.insert()
_prune_versions = secret_versions.delete().where(
    *_of_name(secret_versions), secret_versions.c.version <= sa.bindparam("s_oldest_gone")
)


async def _head(conn: Connection, tenant_id: str, env: str, name: str) -> Any:
    return (await conn.execute(_head_query, _name_params(tenant_id, env, name))).first()


def _not_found(env: str, name: str) -> NotFound:
    return NotFound(f"no secret {name!r} in {env!r}", hint="List secrets with secrets_list.")


async def set_secret(
    conn: Connection,
    keyring: Keyring,
    tenant_id: str,
    env: str,
    name: str,
    value: str,
    *,
    expected_version: int | None,
    by: str | None,
    keep: int = DEFAULT_VERSIONS_KEPT,
    max_versions: int | None = None,
) -> SecretInfo:
    """Store a new version of ``name`` and prune versions beyond the newest ``max_versions`` (given
    now, else stored on the secret, else ``keep``: the server's default).

    Without ``expected_version`` the write always lands, as the next version: writers of one secret
    take turns on a lock on its name (``db.locks``), as config writers do.

    Raises:
        InvalidArgument: bad name or value, or max_versions outside 1..100.
        Conflict: ``expected_version`` is not the current version when the write happens.
    """
    check_key(name, what="secret name")
    plaintext = check_secret_value(value)
    if max_versions is not None and not 1 <= max_versions <= MAX_VERSIONS:
        raise InvalidArgument(
            f"max_versions must be between 1 and {MAX_VERSIONS}", hint="Omit it to keep the server's default."
        )
    await locks.hold(conn, "secret", tenant_id, env, name)
    head = await _head(conn, tenant_id, env, name)
    current = int(head.version) if head is not None else 0
    if max_versions is None and head is not None and head.max_versions is not None:
        max_versions = int(head.max_versions)
    keep = max_versions if max_versions is not None else keep
    if expected_version is not None and expected_version != current:
        state = f"its current version is {current}" if current else "it does not exist"
        raise Conflict(
            f"secret {name!r} in {env!r} changed: expected version {expected_version}, {state}",
            hint="Check secrets_list and retry with the current version.",
        )
    version, now = current + 1, utcnow()
    sealed = crypto.seal(keyring, plaintext, _aad(tenant_id, env, name, version))
    # Writers holding the secret's lock never collide here; these still refuse a writer that does not
    # take it (a replica of an older release).
    conflict = {
        "pk_secrets": lambda: Conflict(f"secret {name!r} was created concurrently", hint="Retry."),
        "pk_secret_versions": lambda: Conflict(f"secret {name!r} was changed concurrently", hint="Retry."),
    }
    named = {"tenant_id": tenant_id, "env": env, "name": name}
    moved = {"version": version, "updated_at": now, "updated_by": by, "max_versions": max_versions}
    async with constraint_errors(conflict):
        if head is None:
            await conn.execute(_insert_head, {**named, **moved})
        else:
            where = {**_name_params(tenant_id, env, name), "s_current": current}
            result = await conn.execute(_advance_head, {**where, **moved})
            if result.rowcount != 1:
                raise conflict["pk_secret_versions"]()
        await conn.execute(
            _insert_version,
            {
                **named,
                "version": version,
                "ciphertext": sealed.ciphertext,
                "nonce": sealed.nonce,
                "wrapped_key": sealed.wrapped_key,
                "key_nonce": sealed.key_nonce,
                "master_key_version": sealed.master_key_version,
                "created_at": now,
                "created_by": by,
            },
        )
    oldest_gone = version - max(keep, 1)
    await conn.execute(_prune_versions, {**_name_params(tenant_id, env, name), "s_oldest_gone": oldest_gone})
    return SecretInfo(name, version, now, by, min(version, max(keep, 1)), max_versions)


async def list_secrets(
    conn: Connection, tenant_id: str, env: str, *, after: str | None = None, limit: int = 1000
) -> list[SecretInfo]:
    """Secret metadata of the environment by name; never values."""
    v = secret_versions.c
    kept = (
        sa.select(sa.func.count())
        .where(v.tenant_id == secrets.c.tenant_id, v.env == secrets.c.env, v.name == secrets.c.name)
        .scalar_subquery()
    )
    query = (
        sa.select(secrets, kept.label("kept"))
        .where(secrets.c.tenant_id == tenant_id, secrets.c.env == env)
        .order_by(secrets.c.name)
        .limit(limit)
    )
    if after is not None:
        query = query.where(secrets.c.name > after)
    rows = await conn.execute(query)
    return [SecretInfo(r.name, r.version, r.updated_at, r.updated_by, int(r.kept), r.max_versions) for r in rows]


async def get_info(conn: Connection, tenant_id: str, env: str, name: str) -> SecretInfo:
    """One secret's metadata.

    Raises:
        NotFound: no such secret.
    """
    head = await _head(conn, tenant_id, env, name)
    if head is None:
        raise _not_found(env, name)
    return SecretInfo(head.name, head.version, head.updated_at, head.updated_by)


# Built once: constructing a statement costs more than running it on SQLite. The head and the wanted
# version (the current one unless a version is given) in one statement.
_reveal_query = (
    sa.select(secret_versions)
    .join(
        secrets,
        sa.and_(
            secrets.c.tenant_id == secret_versions.c.tenant_id,
            secrets.c.env == secret_versions.c.env,
            secrets.c.name == secret_versions.c.name,
        ),
    )
    .where(
        secret_versions.c.tenant_id == sa.bindparam("tenant_id"),
        secret_versions.c.env == sa.bindparam("env"),
        secret_versions.c.name == sa.bindparam("name"),
        secret_versions.c.version == sa.func.coalesce(sa.bindparam("version", type_=sa.Integer()), secrets.c.version),
    )
)


async def reveal(
    conn: Connection, keyring: Keyring, tenant_id: str, env: str, name: str, version: int | None = None
) -> tuple[SecretInfo, str]:
    """Decrypt the current (or a kept) version.

    Raises:
        NotFound: no such secret or version (versions beyond the kept ones are gone).
        DecryptionFailed: the stored row does not authenticate.
    """
    params = {"tenant_id": tenant_id, "env": env, "name": name, "version": version}
    row = (await conn.execute(_reveal_query, params)).first()
    if row is None:
        await get_environment(conn, tenant_id, env)
        if await _head(conn, tenant_id, env, name) is None:
            raise _not_found(env, name)
        raise NotFound(f"secret {name!r} has no kept version {version} in {env!r}", hint="See secrets_list.")
    wanted = int(row.version)
    if row.destroyed_at is not None or (row.destroy_after is not None and row.destroy_after <= utcnow()):
        raise FailedPrecondition(
            f"version {wanted} of secret {name!r} in {env!r} was destroyed: its value is gone",
            hint="Reveal another version (secrets_versions lists them), or set a new value with secrets_set.",
        )
    sealed = Sealed(row.ciphertext, row.nonce, row.wrapped_key, row.key_nonce, row.master_key_version)
    plaintext = crypto.open_sealed(keyring, sealed, _aad(tenant_id, env, name, wanted))
    return SecretInfo(name, wanted, row.created_at, row.created_by), plaintext.decode()


async def delete_secret(conn: Connection, tenant_id: str, env: str, name: str) -> SecretInfo:
    """Delete a secret and every kept version (their ciphertexts are gone with them).

    Raises:
        NotFound: no such secret.
    """
    await locks.hold(conn, "secret", tenant_id, env, name)
    info = await get_info(conn, tenant_id, env, name)
    v = secret_versions.c
    await conn.execute(secret_versions.delete().where(v.tenant_id == tenant_id, v.env == env, v.name == name))
    await conn.execute(
        secrets.delete().where(secrets.c.tenant_id == tenant_id, secrets.c.env == env, secrets.c.name == name)
    )
    return info


async def list_versions(conn: Connection, tenant_id: str, env: str, name: str) -> list[VersionInfo]:
    """A secret's kept versions, newest first, destroyed ones marked as such.

    Raises:
        NotFound: no such secret.
    """
    await get_info(conn, tenant_id, env, name)
    v = secret_versions.c
    query = (
        sa.select(v.version, v.created_at, v.created_by, v.destroyed_at, v.destroyed_by, v.destroy_after)
        .where(v.tenant_id == tenant_id, v.env == env, v.name == name)
        .order_by(v.version.desc())
    )
    return [VersionInfo(**row._mapping) for row in await conn.execute(query)]


async def destroy_version(
    conn: Connection, tenant_id: str, env: str, name: str, version: int, *, by: str | None
) -> VersionInfo:
    """Destroy one version: its ciphertext and wrapped data key are deleted, its metadata kept and
    marked destroyed. Destroying a destroyed version changes nothing.

    Raises:
        NotFound: no such secret, or no kept version ``version``.
    """
    now, v = utcnow(), secret_versions.c
    where = sa.and_(v.tenant_id == tenant_id, v.env == env, v.name == name, v.version == version)
    await conn.execute(
        secret_versions.update()
        .where(where, v.destroyed_at.is_(None))
        .values(**_DESTROYED, destroyed_at=now, destroyed_by=by, destroy_after=None)
    )
    for info in await list_versions(conn, tenant_id, env, name):
        if info.version == version:
            return info
    raise NotFound(f"secret {name!r} has no kept version {version} in {env!r}", hint="See secrets_versions.")


async def schedule_destroy(conn: Connection, tenant_id: str, env: str, name: str, version: int, *, after: int) -> None:
    """Mark ``version`` to be destroyed ``after`` seconds from now (reveal refuses it from then on;
    ``purge_due`` deletes its bytes)."""
    v = secret_versions.c
    await conn.execute(
        secret_versions.update()
        .where(v.tenant_id == tenant_id, v.env == env, v.name == name, v.version == version, v.destroyed_at.is_(None))
        .values(destroy_after=utcnow() + timedelta(seconds=after))
    )


async def has_due(conn: Connection, *, now: datetime) -> bool:
    """True when some version's scheduled destruction is due (served by the destroy_after index)."""
    v = secret_versions.c
    return (await conn.execute(sa.select(v.version).where(v.destroy_after <= now).limit(1))).first() is not None


async def purge_due(conn: Connection, *, now: datetime, limit: int = 200) -> int:
    """Destroy up to ``limit`` versions whose scheduled time has passed; returns how many."""
    v = secret_versions.c
    due = sa.select(v.tenant_id, v.env, v.name, v.version).where(v.destroy_after <= now).limit(limit)
    rows = (await conn.execute(due)).all()
    for r in rows:
        await conn.execute(
            secret_versions.update()
            .where(v.tenant_id == r.tenant_id, v.env == r.env, v.name == r.name, v.version == r.version)
            .values(**_DESTROYED, destroyed_at=now, destroyed_by="schedule", destroy_after=None)
        )
    return len(rows)


async def rewrap_batch(conn: Connection, keyring: Keyring, *, below: int, limit: int = 200) -> int:
    """Re-wrap up to ``limit`` data keys wrapped by a master key older than ``below``; returns how many.

    Payloads are untouched: only ``wrapped_key``, ``key_nonce`` and ``master_key_version`` change.
    """
    v = secret_versions.c
    query = (
        sa.select(
            v.tenant_id,
            v.env,
            v.name,
            v.version,
            v.ciphertext,
            v.nonce,
            v.wrapped_key,
            v.key_nonce,
            v.master_key_version,
        )
        .where(v.master_key_version < below, v.destroyed_at.is_(None))
        .limit(limit)
        .with_for_update()
    )
    rows = (await conn.execute(query)).all()
    for r in rows:
        aad = _aad(r.tenant_id, r.env, r.name, r.version)
        sealed = crypto.rewrap(
            keyring, Sealed(r.ciphertext, r.nonce, r.wrapped_key, r.key_nonce, r.master_key_version), aad
        )
        await conn.execute(
            secret_versions.update()
            .where(v.tenant_id == r.tenant_id, v.env == r.env, v.name == r.name, v.version == r.version)
            .values(
                wrapped_key=sealed.wrapped_key, key_nonce=sealed.key_nonce, master_key_version=sealed.master_key_version
            )
        )
    return len(rows)


async def rotate_master_key(
    db: Database, keyring: Keyring, *, batch: int = 200, progress: Callable[[int], None] | None = None
) -> tuple[int, int]:
    """Re-wrap every data key under a new master key version; returns (new version, keys re-wrapped).

    Old versions keep decrypting until the last batch commits, so servers reading concurrently never
    fail; only then are older versions retired from the key file. With keys from the environment,
    the operator adds the new version there first and this re-wraps to the newest one present.
    ``progress`` is told how many keys each committed batch re-wrapped (an operator's progress bar).
    """
    work, trace = unit_of_work.operator(db, "secrets_rotate_master_key")
    async with work.recorded():
        version = keyring.add_version() if not keyring.from_environment else keyring.current()[0]
        total = 0
        while True:
            async with db.transaction() as conn:
                done = await rewrap_batch(conn, keyring, below=version, limit=batch)
            total += done
            if progress is not None:
                progress(done)
            if done < batch:
                break
        trace.args = {"master_key_version": version, "rewrapped": total}
        await work.commit()
    keyring.retire_below(version)
    return version, total
