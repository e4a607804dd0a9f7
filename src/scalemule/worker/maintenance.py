"""Periodic job maintenance run by every long-running process (``scalemule serve``, ``scalemule worker``).

Claims already rescue their own tenant's expired leases; this pass rescues every tenant's, so that a
job whose worker died is queued again within its lease plus ``INTERVAL`` even when no worker of that
tenant is claiming. It also destroys secret versions whose scheduled destruction is due. Any number of
processes may run it: rescues and destructions are conditional updates, so two passes never rescue one
job twice. No separate daemon is needed.
"""

from __future__ import annotations

import logging

import anyio
from sqlalchemy.exc import SQLAlchemyError

from scalemule.core import jobs, secrets
from scalemule.runtime import Runtime

log = logging.getLogger("scalemule.jobs")

INTERVAL = 1.0


async def rescue_once(runtime: Runtime, *, transport: str = "maintenance") -> int:
    """Rescue one bounded batch of expired leases across tenants; returns how many were rescued."""
    # Look first with a read: most passes find nothing, and then take no write lock (SQLite) at all.
    async with runtime.db.reader() as conn:
        if not await jobs.has_expired(conn, now=runtime.clock()):
            return 0
    async with runtime.db.transaction() as conn:
        rescued = await jobs.rescue_expired(
            conn, now=runtime.clock(), rescuer=jobs.maintenance_principal(), transport=transport
        )
    for job in rescued:
        log.warning("job %s: lease expired on attempt %d, now %s", job.id, job.attempt, job.state)
    return len(rescued)


async def purge_secrets_once(runtime: Runtime) -> int:
    """Destroy one bounded batch of secret versions whose scheduled destruction is due (secrets_rotate);
    reveal already refuses them, this deletes their bytes. Returns how many."""
    async with runtime.db.reader() as conn:
        if not await secrets.has_due(conn, now=runtime.clock()):
            return 0  # the usual case: no write lock taken
    async with runtime.db.transaction() as conn:
        return await secrets.purge_due(conn, now=runtime.clock())


async def rescue_forever(runtime: Runtime, *, interval: float = INTERVAL) -> None:
    """Run ``rescue_once`` every ``interval`` seconds until cancelled; database faults are logged and
    retried on the next pass (a restarting database must not stop the process)."""
    while True:
        try:
            while await rescue_once(runtime) == jobs.RESCUE_BATCH:
                pass  # a backlog: keep going without waiting
            await purge_secrets_once(runtime)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("job maintenance skipped a pass: %s", type(exc).__name__)
        await anyio.sleep(interval)
