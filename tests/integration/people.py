"""People for identity tests: users with keys of their own, and members who joined by invitation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import sqlalchemy as sa

from scalemule.core import identity
from scalemule.db.engine import Connection
from scalemule.runtime import Runtime
from tests.conftest import World

T = TypeVar("T")


async def user_with_key(world: World, email: str) -> tuple[str, str]:
    """A new user with a personal (unbound, unscoped) key, as the operator would issue it."""
    async with world.dispatcher.runtime.db.transaction() as conn:
        user = await identity.create_principal(conn, kind="user", name=email, email=email)
        _, token = await identity.create_key(
            conn, principal_id=user.id, tenant_id=None, name="personal", scopes=None, expires_at=None, created_by=None
        )
    return user.id, token


async def issued_key(world: World, principal_id: str, *, tenant_id: str | None) -> tuple[str, str]:
    """A key of ``principal_id`` as the operator issues it, bound where a caller's API would not let one
    be bound; returns (key id, token)."""
    async with world.dispatcher.runtime.db.transaction() as conn:
        info, token = await identity.create_key(
            conn,
            principal_id=principal_id,
            tenant_id=tenant_id,
            name="issued",
            scopes=None,
            expires_at=None,
            created_by=None,
        )
    return info.id, token


async def join(world: World, token: str, *, by: str, tenant: str = "acme", email: str, role: str) -> None:
    """Invite the holder of ``token`` (``email``) as ``by`` and accept with ``token``."""
    invited = await world.ok("members_add", by, tenant=tenant, email=email, role=role)
    await world.ok("invitations_respond", token, invitation_id=invited["invitation"]["id"], accept=True)


async def member_with_key(world: World, email: str, role: str) -> tuple[str, str]:
    """A user invited to 'acme' by its owner with ``role``, who accepted; returns (principal id, token)."""
    principal_id, token = await user_with_key(world, email)
    await join(world, token, by=world.owner, email=email, role=role)
    return principal_id, token


async def run_while_blocked(
    runtime: Runtime, hold: Callable[[Connection], Awaitable[None]], call: Callable[[], Awaitable[T]]
) -> T:
    """PostgreSQL: run ``hold`` in transaction A, start ``call`` in a task, wait until it is observed
    waiting on a lock A holds, then commit A; returns what ``call`` returned.

    The interleaving is forced, not hoped for: without the lock the wait times out and the test fails.
    """
    result: list[T] = []

    async def run_call() -> None:
        result.append(await call())

    async with anyio.create_task_group() as tasks, runtime.db.transaction() as a:
        pid = (await a.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        await hold(a)
        tasks.start_soon(run_call)
        await _blocked_by(runtime, pid)
    return result[0]


async def _blocked_by(runtime: Runtime, pid: int) -> None:
    query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE CAST(:pid AS integer) = ANY(pg_blocking_pids(pid))")
    with anyio.fail_after(10):
        while True:
            async with runtime.db.engine.connect() as probe:
                if (await probe.execute(query, {"pid": pid})).scalar_one():
                    return
            await anyio.sleep(0.01)  # a bounded poll of the server's lock table, not a wait for timing
