"""core.jobs called directly: what the tools cannot reach or do not show.

A move decided on a stale read, the backoff drawn for a failed attempt, when a finished job ended,
which expired leases a rescue takes and how it is recorded, when the next job is due, and limits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
import pytest

from scalemule.core import identity, jobs, tenants
from scalemule.core.errors import ScaleMuleError
from scalemule.db.engine import Connection
from tests.conftest import StoreProbe, World

pytestmark = pytest.mark.anyio

T = TypeVar("T")
START = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


async def _in(world: World, body: Callable[[Connection], Awaitable[T]]) -> T:
    async with world.dispatcher.runtime.db.transaction() as conn:
        return await body(conn)


async def _enqueue(world: World, *, tenant_id: str | None = None, now: datetime = START, **fields: Any) -> jobs.Job:
    new = jobs.NewJob(**({"tenant_id": tenant_id or world.made.tenant.id, "kind": "k", "payload": {}} | fields))
    return await _in(world, lambda conn: jobs.enqueue(conn, new, now=now))


async def _claim(
    world: World,
    *,
    tenant_id: str | None = None,
    now: datetime = START,
    lease: timedelta = LEASE,
    queues: list[str] | None = None,
    kinds: list[str] | None = None,
    limit: int = 10,
    **transport: str,
) -> list[jobs.Job]:
    tenant = tenant_id or world.made.tenant.id
    worker = world.made.agent
    return await _in(
        world,
        lambda conn: jobs.claim(
            conn, tenant, worker=worker, queues=queues, kinds=kinds, limit=limit, lease=lease, now=now, **transport
        ),
    )


async def _fail(world: World, job: jobs.Job, *, retryable: bool, now: datetime) -> jobs.Job:
    token = job.lease_token or ""
    return await _in(
        world, lambda conn: jobs.fail(conn, job.tenant_id, job.id, token, "x", retryable=retryable, now=now)
    )


async def _get(world: World, job: jobs.Job) -> jobs.Job:
    return await _in(world, lambda conn: jobs.get(conn, job.tenant_id, job.id))


async def _other_tenant(world: World) -> str:
    async def make(conn: Connection) -> str:
        bob = await identity.create_principal(conn, kind="user", name="bob", email="bob@example.com")
        return (await tenants.create_tenant(conn, slug="globex", name="Globex", owner=bob)).id

    return await _in(world, make)


async def test_a_move_decided_on_a_stale_read_is_a_conflict_once_another_worker_holds_the_job(world: World) -> None:
    await _enqueue(world)
    (first,) = await _claim(world)
    (second,) = await _claim(world, now=START + LEASE + timedelta(seconds=1))  # rescued, then claimed again
    assert second.id == first.id and second.lease_token != first.lease_token
    with pytest.raises(ScaleMuleError) as raised:
        await _in(world, lambda conn: jobs._move(conn, first, "heartbeat", {"lease_expires_at": START + 2 * LEASE}))
    assert raised.value.code == "conflict"
    assert (await _get(world, second)).lease_expires_at == second.lease_expires_at


async def test_a_failed_attempt_is_due_again_after_the_backoff_drawn_for_it(world: World) -> None:
    await _enqueue(world, max_attempts=3)
    (job,) = await _claim(world)
    assert job.lease_token is not None
    token = job.lease_token
    failed = await _in(
        world,
        lambda conn: jobs.fail(conn, job.tenant_id, job.id, token, "boom", retryable=True, now=START, rand=lambda: 0.0),
    )
    # Attempt 1: nominal 2 s, drawn at the bottom of its jitter.
    assert (failed.state, failed.run_at, failed.finished_at) == ("failed", START + timedelta(seconds=1), None)


async def test_a_job_that_ends_dead_or_cancelled_records_when_it_ended(world: World) -> None:
    later = START + timedelta(seconds=5)
    await _enqueue(world, kind="dead")
    await _enqueue(world, kind="stopped")
    (dead,) = await _claim(world, kinds=["dead"])
    (stopped,) = await _claim(world, kinds=["stopped"])
    await _in(world, lambda conn: jobs.cancel(conn, stopped.tenant_id, stopped.id, now=START))
    assert (await _fail(world, dead, retryable=False, now=later)).finished_at == later
    assert (await _fail(world, stopped, retryable=True, now=later)).finished_at == later
    assert [(await _get(world, j)).state for j in (dead, stopped)] == ["dead", "cancelled"]


async def test_a_rescue_on_the_last_attempt_records_when_the_job_ended(world: World) -> None:
    await _enqueue(world, max_attempts=1)
    (job,) = await _claim(world)
    expired = START + LEASE + timedelta(seconds=1)
    (rescued,) = await _in(world, lambda conn: jobs.rescue_expired(conn, now=expired, rescuer=world.made.agent))
    assert (rescued.id, rescued.state, rescued.finished_at) == (job.id, "dead", expired)
    (event,) = [e for e in await StoreProbe(world.dispatcher.runtime).audit_events() if e["target"] == job.id]
    assert (event["operation"], event["transport"]) == ("jobs_rescue", "internal")
    assert (START + LEASE).isoformat() in (rescued.last_error or "")  # when the lease ran out


async def test_a_rescue_takes_the_oldest_expired_leases_first_and_no_more_than_its_limit(world: World) -> None:
    await _enqueue(world, kind="long")
    await _enqueue(world, kind="short")
    (long,) = await _claim(world, kinds=["long"], lease=timedelta(seconds=20))
    (short,) = await _claim(world, kinds=["short"], lease=timedelta(seconds=10))
    rescuer = world.made.agent
    at_its_end = START + timedelta(seconds=10)  # a lease holds up to its last instant
    assert await _in(world, lambda conn: jobs.rescue_expired(conn, now=at_its_end, rescuer=rescuer)) == []
    at = START + timedelta(seconds=30)
    rescued = await _in(world, lambda conn: jobs.rescue_expired(conn, now=at, rescuer=rescuer, limit=1))
    assert [j.id for j in rescued] == [short.id]
    assert (await _get(world, long)).state == "running"


async def test_a_claim_takes_and_rescues_only_its_own_tenants_jobs(world: World) -> None:
    other = await _other_tenant(world)
    theirs = await _enqueue(world, tenant_id=other)
    (held,) = await _claim(world, tenant_id=other, lease=timedelta(seconds=10))
    waiting = await _enqueue(world, tenant_id=other)
    later = START + timedelta(seconds=20)
    assert await _claim(world, now=later) == []  # neither their due job nor their expired lease
    assert held.id == theirs.id and (await _get(world, held)).state == "running"
    assert (await _get(world, waiting)).state == "queued"
    rescued = await _in(world, lambda conn: jobs.rescue_expired(conn, now=later, rescuer=world.made.agent))
    assert [j.id for j in rescued] == [held.id]


async def test_a_rescue_is_recorded_in_the_jobs_tenant_as_the_rescuer_and_over_its_transport(
    world: World, probe: StoreProbe
) -> None:
    await _enqueue(world)
    await _enqueue(world)
    first, second = await _claim(world)
    expired = START + LEASE + timedelta(seconds=1)
    await _claim(world, now=expired, kinds=["none"], transport="stdio")  # a claim rescues its tenant's leases first
    maintenance = jobs.maintenance_principal()
    assert (maintenance.id, maintenance.kind, maintenance.name) == ("maintenance", "operator", "job-maintenance")
    events = [e for e in await probe.audit_events() if e["operation"] == "jobs_rescue"]
    assert {e["target"] for e in events} == {first.id, second.id}
    agent = world.made.agent
    for event in events:
        assert (event["tenant_id"], event["outcome"], event["transport"], event["duration_ms"]) == (
            world.made.tenant.id,
            "ok",
            "stdio",
            0,
        )
        assert (event["actor_id"], event["actor_kind"], event["actor_name"]) == (agent.id, "agent", agent.name)
        assert (event["on_behalf_of"], event["permission"]) == (world.made.owner.id, "jobs:work")
    await _enqueue(world, max_attempts=1, kind="last")
    (third,) = await _claim(world, now=expired, kinds=["last"])
    later = expired + LEASE + timedelta(seconds=1)
    await _in(world, lambda conn: jobs.rescue_expired(conn, now=later, rescuer=maintenance, transport="maintenance"))
    (event,) = [e for e in await probe.audit_events() if e["operation"] == "jobs_rescue" and e["target"] == third.id]
    assert (event["actor_id"], event["actor_kind"], event["transport"]) == ("maintenance", "operator", "maintenance")
    assert event["args"] == {"job_id": third.id, "attempt": 1, "state": "dead", "reason": "lease expired"}


async def test_a_probe_counts_the_tenants_due_jobs_of_the_queues_and_kinds_asked_up_to_its_bound(
    world: World,
) -> None:
    tenant = world.made.tenant.id

    async def due(
        queues: list[str] | None = None, kinds: list[str] | None = None, at: datetime = START, up_to: int = 10
    ) -> int:
        return await _in(world, lambda conn: jobs.due(conn, tenant, queues=queues, kinds=kinds, now=at, up_to=up_to))

    assert await due() == 0
    await _enqueue(world, kind="running")
    await _claim(world)
    await _enqueue(world, tenant_id=await _other_tenant(world))
    await _enqueue(world, queue="images", delay=timedelta(seconds=300))
    await _enqueue(world, kind="resize", delay=timedelta(seconds=60))
    for kind in ("k", "k", "resize"):
        await _enqueue(world, kind=kind)
    assert await due() == 3
    assert await due(up_to=2) == 2
    assert await due(kinds=["resize"]) == 1
    assert await due(kinds=["resize"], at=START + timedelta(seconds=60)) == 2
    assert await due(queues=["images"]) == 0
    assert await due(queues=["images"], at=START + timedelta(seconds=300)) == 1
    assert await due(queues=["images"], kinds=["resize"], at=START + timedelta(days=1)) == 0


async def test_a_heartbeat_keeps_the_first_500_characters_of_its_message(world: World) -> None:
    await _enqueue(world)
    (job,) = await _claim(world)
    token = job.lease_token or ""
    beat = await _in(
        world,
        lambda conn: jobs.heartbeat(
            conn, job.tenant_id, job.id, token, progress=None, message="x" * 600, extend=None, now=START
        ),
    )
    assert beat.progress_message == "x" * 500 and beat.lease_expires_at == START + jobs.DEFAULT_LEASE


async def test_a_listing_returns_at_most_its_limit_and_pages_through_jobs_made_at_the_same_instant(
    world: World,
) -> None:
    made = [await _enqueue(world) for _ in range(5)]
    tenant = world.made.tenant.id
    seen: list[str] = []

    async def page_after(after: str | None) -> list[jobs.Job]:
        return await _in(world, lambda conn: jobs.list_jobs(conn, tenant, after=after, limit=2))

    after: str | None = None
    while True:
        page = await page_after(after)
        assert len(page) <= 2
        seen += [j.id for j in page]
        if len(page) < 2:
            break
        after = page[-1].position
    assert seen == sorted((j.id for j in made), reverse=True)


async def test_claims_take_the_earliest_due_then_the_smallest_id_among_equal_priorities(world: World) -> None:
    # Enqueued in the opposite order to the one they are claimed in, and ids drawn at random.
    made = [await _enqueue(world, delay=timedelta(seconds=s)) for s in (60, 50, 40, 30, 20, 10)]
    at = START + timedelta(seconds=60)
    assert [j.id for j in await _claim(world, now=at)] == [j.id for j in reversed(made)]
    same = [await _enqueue(world, now=at, kind="same") for _ in range(6)]
    assert [j.id for j in await _claim(world, now=at, kinds=["same"])] == sorted(j.id for j in same)


async def test_a_claim_filtered_by_queue_or_kind_takes_only_its_tenants_due_jobs(world: World) -> None:
    await _enqueue(world, queue="images", kind="resize", delay=timedelta(seconds=60))
    await _enqueue(world, tenant_id=await _other_tenant(world), queue="images", kind="resize")
    assert await _claim(world, queues=["images"]) == []
    assert await _claim(world, kinds=["resize"]) == []
    assert await _claim(world, queues=["images"], kinds=["resize"]) == []


async def test_a_lease_token_moves_only_the_job_it_leases_and_only_in_that_jobs_tenant(world: World) -> None:
    await _enqueue(world)
    waiting = await _enqueue(world, now=START + timedelta(seconds=1))
    (held,) = await _claim(world, limit=1)
    token = held.lease_token or ""
    other = await _other_tenant(world)

    async def complete(tenant_id: str, job_id: str) -> str:
        with pytest.raises(ScaleMuleError) as raised:
            await _in(world, lambda conn: jobs.complete(conn, tenant_id, job_id, token, {"ok": 1}, now=START))
        return raised.value.code

    assert await complete(held.tenant_id, waiting.id) == "conflict"
    assert await complete(other, held.id) == "not_found"
    assert (await _get(world, held)) == held
    assert (await _get(world, waiting)).state == "queued"


async def test_a_failed_attempts_detail_is_kept_as_its_result_and_one_over_the_limit_is_refused(world: World) -> None:
    await _enqueue(world, kind="big")
    await _enqueue(world, kind="small")
    (big,) = await _claim(world, kinds=["big"])
    (small,) = await _claim(world, kinds=["small"])

    async def fail(job: jobs.Job, detail: Any) -> jobs.Job:
        token = job.lease_token or ""
        return await _in(
            world,
            lambda conn: jobs.fail(conn, job.tenant_id, job.id, token, "x", retryable=True, now=START, detail=detail),
        )

    with pytest.raises(ScaleMuleError) as raised:
        await fail(big, ["x" * 300_000])
    assert raised.value.code == "invalid_argument" and raised.value.message.startswith("result is")
    assert (await _get(world, big)) == big  # still leased, nothing written
    failed = await fail(small, {"step": 3})
    assert (failed.state, failed.result) == ("failed", {"step": 3})
    assert (await _get(world, small)).result == {"step": 3}


async def test_a_server_job_is_queued_in_the_server_queue_due_now_and_a_bad_one_is_refused(world: World) -> None:
    tenant = world.made.tenant.id
    new = jobs.NewJob(tenant_id=tenant, kind="audit_verify", payload={"from_seq": 1}, queue="images")
    made = await _in(world, lambda conn: jobs.enqueue_server(conn, new, now=START))
    assert (made.queue, made.kind, made.payload, made.state, made.run_at) == (
        jobs.SERVER_QUEUE,
        "audit_verify",
        {"from_seq": 1},
        "queued",
        START,
    )
    assert (await _get(world, made)) == made

    async def refused(bad: jobs.NewJob) -> ScaleMuleError:
        with pytest.raises(ScaleMuleError) as raised:
            await _in(world, lambda conn: jobs.enqueue_server(conn, bad, now=START))
        return raised.value

    big, unnamed = await refused(replace(new, payload=["x" * 300_000])), await refused(replace(new, kind="9lives"))
    assert (big.code, unnamed.code) == ("invalid_argument", "invalid_argument")
    assert big.message.startswith("payload is") and unnamed.message.startswith("job kind")
    listed = await _in(world, lambda conn: jobs.list_jobs(conn, tenant, limit=10))
    assert [j.id for j in listed] == [made.id]


async def test_a_server_claim_takes_due_server_jobs_of_every_tenant_oldest_first_under_its_lease(
    world: World,
) -> None:
    async def enqueue_server(tenant_id: str, at: datetime) -> jobs.Job:
        new = jobs.NewJob(tenant_id=tenant_id, kind="audit_verify", payload={})
        return await _in(world, lambda conn: jobs.enqueue_server(conn, new, now=at))

    async def due(at: datetime) -> bool:
        return await _in(world, lambda conn: jobs.server_due(conn, now=at))

    async def claim_server(at: datetime, limit: int = 10) -> list[jobs.Job]:
        return await _in(
            world, lambda conn: jobs.claim_server(conn, worker_id="srv_1", limit=limit, lease=LEASE, now=at)
        )

    mine = await enqueue_server(world.made.tenant.id, START + timedelta(seconds=2))
    theirs = await enqueue_server(await _other_tenant(world), START + timedelta(seconds=1))
    later = await enqueue_server(world.made.tenant.id, START + timedelta(seconds=60))
    await _enqueue(world)  # a tenant's own job: never the server's
    assert not await due(START)
    at = START + timedelta(seconds=10)
    assert await due(at)
    taken = await claim_server(at)
    assert [j.id for j in taken] == [theirs.id, mine.id]
    for job in taken:
        assert (job.state, job.attempt, job.worker_id, job.started_at, job.run_at) == ("running", 1, "srv_1", at, at)
        assert job.lease_expires_at == at + LEASE and job.lease_token and (await _get(world, job)) == job
    assert taken[0].lease_token != taken[1].lease_token
    assert not await due(at) and await claim_server(at) == []
    end = START + timedelta(seconds=60)
    assert [j.id for j in await claim_server(end, limit=1)] == [later.id]


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
async def test_on_postgresql_workers_claiming_at_once_take_different_jobs_without_waiting(world: World) -> None:
    tenant, worker = world.made.tenant.id, world.made.agent
    server_job = jobs.NewJob(tenant_id=tenant, kind="audit_verify", payload={})
    for at in (START, START + timedelta(seconds=1)):
        await _enqueue(world, now=at)
        await _in(world, lambda conn, at=at: jobs.enqueue_server(conn, server_job, now=at))
    await _enqueue(world, kind="lost")
    await _claim(world, kinds=["lost"], lease=timedelta(seconds=1))  # expired by now: the first claim rescues it
    now = START + timedelta(seconds=10)

    async def claims(conn: Connection) -> list[str]:
        mine = await jobs.claim(conn, tenant, worker=worker, queues=None, kinds=None, limit=1, lease=LEASE, now=now)
        server = await jobs.claim_server(conn, worker_id="srv_1", limit=1, lease=LEASE, now=now)
        return [j.id for j in mine + server]

    holding, done = anyio.Event(), anyio.Event()
    first: list[str] = []

    async def hold() -> None:
        async with world.dispatcher.runtime.db.transaction() as conn:
            first.extend(await claims(conn))
            holding.set()
            await done.wait()  # its rows stay locked until this transaction ends

    with anyio.fail_after(10):  # a claim that waited on those locks would wait for good
        async with anyio.create_task_group() as group:
            group.start_soon(hold)
            await holding.wait()
            second = await _in(world, claims)
            done.set()
    assert len(first) == len(second) == 2 and not set(first) & set(second)
