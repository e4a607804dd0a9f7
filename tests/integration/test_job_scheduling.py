"""Backoff, delays and rescue of expired leases, with an injected clock: no test sleeps."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from scalemule.worker.maintenance import rescue_once
from tests.conftest import StoreProbe, World
from tests.integration.test_jobs import Clock, _claim, _enqueue

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock(world: World) -> Clock:
    made = Clock()
    world.dispatcher.runtime.clock = made
    return made


async def _fail(world: World, job: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return await world.ok(
        "jobs_fail", world.agent, job_id=job["id"], lease_token=job["lease_token"], error="boom", **extra
    )


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_a_failed_attempt_waits_its_backoff_before_it_can_be_claimed_again(world: World, clock: Clock) -> None:
    await _enqueue(world, max_attempts=3)
    (job,) = await _claim(world)
    failed = await _fail(world, job)
    assert failed["state"] == "failed"
    delay = (_at(failed["next_run_at"]) - clock.now).total_seconds()
    assert 1 <= delay <= 2  # attempt 1: nominal 2 s, jittered into [50%, 100%]
    clock.advance(delay - 0.01)
    assert await _claim(world) == []
    clock.advance(0.02)
    (again,) = await _claim(world)
    assert again["attempt"] == 2 and again["last_error"] == "boom"
    second = await _fail(world, again)
    delay = (_at(second["next_run_at"]) - clock.now).total_seconds()
    assert 2 <= delay <= 4
    clock.advance(4)
    (last,) = await _claim(world)
    assert (await _fail(world, last))["state"] == "dead"


async def test_a_non_retryable_failure_is_dead_at_once(world: World) -> None:
    await _enqueue(world)
    (job,) = await _claim(world)
    assert (await _fail(world, job, retryable=False))["state"] == "dead"


async def test_a_delayed_job_is_not_claimed_before_it_is_due(world: World, clock: Clock) -> None:
    made = await _enqueue(world, delay_seconds=90)
    clock.advance(89)
    assert await _claim(world) == []
    clock.advance(1)
    assert [j["id"] for j in await _claim(world)] == [made["id"]]


async def test_a_delay_of_zero_runs_now(world: World) -> None:
    made = await _enqueue(world, delay_seconds=0)
    assert [j["id"] for j in await _claim(world)] == [made["id"]]


async def test_a_job_scheduled_with_run_at_waits_for_it(world: World, clock: Clock) -> None:
    made = await _enqueue(world, run_at=(clock.now + timedelta(hours=1)).isoformat())
    assert await _claim(world) == []
    clock.advance(3600)
    assert [j["id"] for j in await _claim(world)] == [made["id"]]


async def test_an_expired_lease_is_rescued_by_the_next_claim_and_the_old_token_is_stale(
    world: World, clock: Clock, probe: StoreProbe
) -> None:
    made = await _enqueue(world)
    (first,) = await _claim(world, lease_seconds=30)
    clock.advance(30)
    assert await _claim(world) == []  # a lease holds up to its last instant
    clock.advance(1)
    (second,) = await _claim(world, lease_seconds=30)
    assert second["id"] == made["id"] and second["attempt"] == 2
    assert "lease expired" in (second["last_error"] or "")
    stale = {"job_id": first["id"], "lease_token": first["lease_token"]}
    assert await world.code("jobs_complete", world.agent, **stale, result=1) == "conflict"
    await world.ok("jobs_complete", world.agent, job_id=second["id"], lease_token=second["lease_token"], result=2)
    assert (await world.ok("jobs_get", world.agent, job_id=made["id"]))["result"] == 2
    (rescue,) = [e for e in await probe.audit_events() if e["operation"] == "jobs_rescue"]
    assert rescue["target"] == made["id"] and rescue["actor_name"] == "acme-agent"
    assert rescue["transport"] == "internal"  # made by the server inside the claim
    assert rescue["args"] == {"job_id": made["id"], "attempt": 1, "state": "queued", "reason": "lease expired"}


async def test_a_heartbeat_keeps_a_lease_alive(world: World, clock: Clock) -> None:
    await _enqueue(world)
    (job,) = await _claim(world, lease_seconds=30)
    for _ in range(5):
        clock.advance(20)
        args = {"job_id": job["id"], "lease_token": job["lease_token"], "extend_seconds": 30}
        assert (await world.ok("jobs_heartbeat", world.agent, **args))["state"] == "running"
        assert await _claim(world) == []


async def test_maintenance_rescues_every_tenants_expired_leases_without_a_claim(
    world: World, clock: Clock, probe: StoreProbe
) -> None:
    made = await _enqueue(world)
    await _claim(world, lease_seconds=10)
    clock.advance(10)
    assert await rescue_once(world.dispatcher.runtime) == 0
    clock.advance(1)
    assert await rescue_once(world.dispatcher.runtime) == 1
    job = await world.ok("jobs_get", world.agent, job_id=made["id"])
    assert (job["state"], job["attempt"]) == ("queued", 1)
    (rescue,) = [e for e in await probe.audit_events() if e["operation"] == "jobs_rescue"]
    assert (rescue["actor_name"], rescue["transport"]) == ("job-maintenance", "maintenance")


async def test_a_rescue_on_the_last_attempt_is_dead_and_one_whose_cancel_was_requested_is_cancelled(
    world: World, clock: Clock
) -> None:
    last = await _enqueue(world, max_attempts=1)
    await _claim(world, lease_seconds=5)
    asked = await _enqueue(world)
    await _claim(world, lease_seconds=5)
    await world.ok("jobs_cancel", world.agent, job_id=asked["id"])
    clock.advance(6)
    assert await rescue_once(world.dispatcher.runtime) == 2
    assert (await world.ok("jobs_get", world.agent, job_id=last["id"]))["state"] == "dead"
    assert (await world.ok("jobs_get", world.agent, job_id=asked["id"]))["state"] == "cancelled"
