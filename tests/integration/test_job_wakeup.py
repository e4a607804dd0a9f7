"""How an idle worker hears of a new job on PostgreSQL, and which of the woken workers answers it.

``worker.wakeup.Listener`` is the worker's side (``worker/runner.py`` starts it on PostgreSQL). Wakes
are counted as they arrive. PostgreSQL delivers notifications to a connection in commit order, so a
wrong wake (another tenant's job, a rolled-back one) would come before the right one that follows it.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import asyncpg
import pytest

from scalemule.core import jobs
from scalemule.db.engine import Connection
from scalemule.worker.wakeup import Listener, asyncpg_target
from tests.conftest import World
from tests.integration.test_job_store import START, _claim, _enqueue, _other_tenant

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("store", ["postgresql"], indirect=True)]


@dataclass
class Wakes:
    """Wakes seen so far; ``reach(n)`` waits until there have been ``n``."""

    count: int = 0
    listener: Listener | None = None
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def wake(self) -> None:
        self.count += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def reach(self, n: int) -> None:
        with anyio.fail_after(10):
            while self.count < n:
                await self._changed.wait()


@asynccontextmanager
async def _listening(world: World, url: str, *, kinds: tuple[str, ...] = ("k",)) -> AsyncIterator[Wakes]:
    """A running listener for the world's tenant taking jobs of ``kinds``, past its first wake (the
    catch-up on connect); the listener is ``wakes.listener``."""
    wakes = Wakes()
    wakes.listener = Listener(url, world.made.tenant.id, lambda _queue, kind: kind in kinds, wakes.wake)
    async with anyio.create_task_group() as group:
        group.start_soon(wakes.listener.run)
        await wakes.reach(1)
        yield wakes
        group.cancel_scope.cancel()


async def _admin(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    dsn, settings = asyncpg_target(url)
    conn = await asyncpg.connect(dsn, server_settings=settings)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def _rolled_back(world: World, enqueue: Callable[[Connection], Awaitable[object]]) -> None:
    class Abandon(Exception):
        pass

    with pytest.raises(Abandon):
        async with world.dispatcher.runtime.db.transaction() as conn:
            await enqueue(conn)
            raise Abandon


async def test_an_enqueue_wakes_a_listener_of_its_tenant_once_and_only_on_commit(world: World) -> None:
    url = world.dispatcher.runtime.settings.url
    other = await _other_tenant(world)
    async with _listening(world, url) as wakes:
        await _enqueue(world, tenant_id=other)  # another tenant's job: not for this listener
        new = jobs.NewJob(tenant_id=world.made.tenant.id, kind="k", payload={})
        await _rolled_back(world, lambda conn: jobs.enqueue(conn, new, now=START))  # never committed
        await _enqueue(world)
        await wakes.reach(2)
        # A wrong wake (the other tenant's job, the rolled-back one) comes before the right one, in
        # commit order: after a moment for the right one to follow it, it would show in the count.
        await anyio.sleep(0.2)
        assert wakes.count == 2
        await _enqueue(world)
        await wakes.reach(3)


async def test_a_listener_whose_connection_drops_reconnects_wakes_to_catch_up_and_hears_enqueues_again(
    world: World,
) -> None:
    name = f"wakeup-{secrets.token_hex(4)}"  # tells the listener's connection apart in pg_stat_activity
    url = world.dispatcher.runtime.settings.url
    async with _listening(world, f"{url}&application_name={name}") as wakes:
        dropped = await _admin(
            url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", name
        )
        assert [row[0] for row in dropped] == [True]
        await wakes.reach(2)  # reconnected: one wake, since a job may have come while it was away
        await _enqueue(world)
        await wakes.reach(3)


async def test_a_listener_is_woken_only_by_jobs_due_now_that_its_worker_takes(world: World) -> None:
    url = world.dispatcher.runtime.settings.url
    async with _listening(world, url, kinds=("k",)) as wakes:
        await _enqueue(world, kind="other")  # a kind this worker has no handler for
        await _enqueue(world, delay=timedelta(seconds=60))  # due later: the probe finds it then
        wanted = await _enqueue(world)
        await wakes.reach(2)
        await anyio.sleep(0.2)  # a wrong wake would have come before the right one
        assert wakes.count == 2
        assert wakes.listener is not None and list(wakes.listener.pending) == [wanted.id]


async def _answers(*wakes: Wakes, free: int = 1) -> list[bool]:
    """Each listener's answer, asked at once."""
    answers = [False] * len(wakes)

    async def ask(n: int, listener: Listener) -> None:
        answers[n] = await listener.answer(free)

    async with anyio.create_task_group() as group:
        for n, woken in enumerate(wakes):
            assert woken.listener is not None
            group.start_soon(ask, n, woken.listener)
    return answers


async def test_of_the_workers_one_enqueue_woke_one_answers_it(world: World) -> None:
    url = world.dispatcher.runtime.settings.url
    async with _listening(world, url) as first, _listening(world, url) as second, _listening(world, url) as third:
        await _enqueue(world)
        for woken in (first, second, third):
            await woken.reach(2)
        assert sorted(await _answers(first, second, third)) == [False, False, True]


async def test_an_answer_to_a_job_already_claimed_is_no(world: World) -> None:
    url = world.dispatcher.runtime.settings.url
    async with _listening(world, url) as wakes:
        assert wakes.listener is not None
        await _enqueue(world)
        await wakes.reach(2)
        await _claim(world)  # another worker's, committed and released before this one answers
        assert await _answers(wakes) == [False]


async def test_a_worker_answers_no_more_announced_jobs_than_it_has_free_slots(world: World) -> None:
    url = world.dispatcher.runtime.settings.url
    async with _listening(world, url) as first, _listening(world, url) as second, _listening(world, url) as third:
        for _ in range(3):
            await _enqueue(world)
        for woken in (first, second, third):
            await woken.reach(4)
        assert await _answers(first, free=1) == [True]  # it takes one of the three
        assert await _answers(second, free=5) == [True]  # the other two are left for the rest
        assert await _answers(third, free=5) == [False]
