"""How an idle worker learns that a job may be due without calling jobs_claim.

A claim is a call: authenticated, authorized and audited. An idle worker therefore claims only when a
job is due: on PostgreSQL it listens for the NOTIFY every enqueue sends on commit; on both stores it
also probes the jobs table directly (a read that changes nothing, so it is not a call and leaves no
audit event) with a backoff, which is the whole mechanism on SQLite and the fallback on PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio

from scalemule.core import jobs
from scalemule.db.engine import normalize_url

log = logging.getLogger("scalemule.worker")


class Signal:
    """A wake-up that can be raised many times: ``wait`` returns when raised (or on timeout) and re-arms."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        """Wake the waiter."""
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Wait until raised or ``seconds`` pass, then re-arm."""
        with anyio.move_on_after(seconds):
            await self._event.wait()
        if self._event.is_set():
            self._event = anyio.Event()


def asyncpg_target(url: str) -> tuple[str, dict[str, Any]]:
    """The asyncpg DSN and server settings (search_path, application_name) for a ScaleMule URL."""
    parsed, connect_args = normalize_url(url)
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    return dsn, dict(connect_args.get("server_settings", {}))


async def listen(url: str, tenant_id: str, wake: Callable[[], None]) -> None:
    """Call ``wake`` whenever a job is enqueued in ``tenant_id``; reconnect with backoff when the
    connection drops (a restarting database), waking once after each reconnect to catch up. Runs
    until cancelled."""
    import asyncpg  # type: ignore[import-untyped]

    dsn, server_settings = asyncpg_target(url)
    delay = 0.5
    while True:
        try:
            conn = await asyncpg.connect(dsn, server_settings=server_settings)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("job notifications unavailable (%s); polling, retrying in %.1fs", type(exc).__name__, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        try:
            closed = anyio.Event()
            conn.add_termination_listener(lambda _conn, done=closed: done.set())

            def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                if payload == tenant_id:
                    wake()

            await conn.add_listener(jobs.NOTIFY_CHANNEL, on_notify)
            delay = 0.5
            wake()
            while not conn.is_closed() and not closed.is_set():
                with anyio.move_on_after(5):
                    await closed.wait()
            log.warning("job notifications: connection lost; reconnecting")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("job notifications: %s; reconnecting", type(exc).__name__)
        finally:
            conn.terminate()
        await anyio.sleep(delay)
