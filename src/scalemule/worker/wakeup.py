"""How an idle worker learns that a job may be due without calling jobs_claim, and which worker answers.

A claim is a call: authenticated, authorized and audited. An idle worker therefore claims only when a
job is due: on PostgreSQL it listens for the NOTIFY an enqueue of a job due now sends on commit, and of
the workers so woken one answers each job (``Listener``); on both stores it also probes the jobs table
directly (a read that changes nothing, so it is not a call and leaves no audit event), which is the
whole mechanism on SQLite and finds scheduled jobs and retries on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from scalemule.core import jobs
from scalemule.core.job_states import CLAIMABLE
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


PENDING_LIMIT = 256
# The class of the advisory locks (two-key form) by which workers settle who answers an announcement.
ANSWER_LOCKS = 0x6A6F6273


class Listener:
    """A worker's LISTEN connection on PostgreSQL: it wakes the worker when a job it could take is
    enqueued in its tenant, and settles which of the workers so woken claims for it.

    Every listener hears every announcement, so without the second part one enqueue would make every
    idle worker call ``jobs_claim``, and all but one would come back empty. An answering worker first
    takes, on this connection, the advisory lock of one announced job per free slot (``answer``);
    each lock goes to one connection, so one worker answers each job. It holds the locks until its
    claim has committed (``release``), by when the job is no longer due.
    """

    def __init__(self, url: str, tenant_id: str, wants: Callable[[str, str], bool], wake: Callable[[], None]) -> None:
        """Args:
        url: the store's URL.
        tenant_id: the worker's tenant.
        wants: whether the worker takes jobs of (queue, kind).
        wake: called when such a job is announced, and once after each (re)connection to catch up.
        """
        self.url = url
        self.tenant_id = tenant_id
        self.wants = wants
        self.wake = wake
        # Jobs announced since the worker last answered, the newest kept while it has no free slot.
        self.pending: deque[str] = deque(maxlen=PENDING_LIMIT)
        self._conn: Any = None

    @property
    def listening(self) -> bool:
        """Whether announcements are being heard now (connected)."""
        return self._conn is not None and not self._conn.is_closed()

    def _heard(self, payload: str) -> None:
        parts = payload.split(" ")
        if len(parts) == 4 and parts[0] == self.tenant_id and self.wants(parts[2], parts[3]):
            self.pending.append(parts[1])
            self.wake()

    async def answer(self, free: int) -> bool:
        """Whether this worker claims for the jobs announced since it last asked: it does when it takes
        the lock of at least one of them (at most ``free``) that is still waiting to be claimed. Call
        ``release`` after, whatever the answer. True when it cannot tell (no connection): then a claim
        too many is only an empty claim."""
        import asyncpg  # type: ignore[import-untyped]

        announced = list(self.pending)
        self.pending.clear()
        if not self.listening:
            return True
        try:
            won = await self._conn.fetchval(_ANSWER, announced, ANSWER_LOCKS, free, list(CLAIMABLE))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return True
        return bool(won)

    async def release(self) -> None:
        """Give up the locks ``answer`` took, once the claim they were for has committed."""
        import asyncpg

        if self.listening:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._conn.execute("SELECT pg_advisory_unlock_all()")

    async def run(self) -> None:
        """Listen until cancelled; reconnect with backoff when the connection drops (a restarting
        database), waking once after each reconnect to catch up."""
        import asyncpg

        dsn, server_settings = asyncpg_target(self.url)
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
                await conn.add_listener(jobs.NOTIFY_CHANNEL, lambda _c, _pid, _channel, payload: self._heard(payload))
                self._conn = conn
                delay = 0.5
                self.wake()
                while not conn.is_closed() and not closed.is_set():
                    with anyio.move_on_after(5):
                        await closed.wait()
                log.warning("job notifications: connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("job notifications: %s; reconnecting", type(exc).__name__)
            finally:
                self._conn = None
                conn.terminate()
            await anyio.sleep(delay)


# A job still waiting (not claimed by a worker that answered before this one, and released since),
# locked by this connection alone; at most as many as the worker has free slots, leaving the rest to
# the others.
_ANSWER = """
SELECT count(*) FROM (
    SELECT 1 FROM unnest($1::text[]) AS announced(id) JOIN jobs ON jobs.id = announced.id
    WHERE jobs.state = ANY($4::text[]) AND pg_try_advisory_lock($2, hashtext(jobs.id))
    LIMIT $3
) AS won
"""
