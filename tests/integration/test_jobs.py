"""The jobs and worker tools through the dispatch path: enqueue, read, list, cancel, retry, claim, finish."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from scalemule import dispatch
from scalemule.core import identity, jobs, tenants
from scalemule.core.audit_rollups import flush
from scalemule.core.ids import utcnow
from tests.conftest import StoreProbe, World

pytestmark = pytest.mark.anyio


class Clock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(world: World) -> Clock:
    made = Clock()
    world.dispatcher.runtime.clock = made
    return made


async def _enqueue(world: World, **arguments: Any) -> dict[str, Any]:
    return await world.ok("jobs_enqueue", world.agent, **({"kind": "describe_dishes", "payload": {}} | arguments))


async def _claim(world: World, **arguments: Any) -> list[dict[str, Any]]:
    return list((await world.ok("jobs_claim", world.agent, **arguments))["jobs"])


async def test_an_enqueued_job_is_queued_and_shows_who_enqueued_it(world: World, clock: Clock) -> None:
    made = await _enqueue(world, payload={"photo": "uploads/menu.png"})
    assert made["state"] == "queued" and made["attempt"] == 0 and made["max_attempts"] == 5
    assert made["id"].startswith("job_")
    job = await world.ok("jobs_get", world.agent, job_id=made["id"])
    assert job["payload"] == {"photo": "uploads/menu.png"}
    assert job["enqueued_by"]["principal_id"] == world.made.agent.id
    assert job["enqueued_by"]["key_id"] is not None
    assert job["created_at"] == job["next_run_at"] == clock.now.isoformat().replace("+00:00", "Z")


async def test_the_same_idempotency_key_returns_the_first_job_and_other_arguments_conflict(world: World) -> None:
    first = await _enqueue(world, idempotency_key="menu-42")
    again = await _enqueue(world, idempotency_key="menu-42")
    assert again["id"] == first["id"]
    outcome = await world.call("jobs_enqueue", world.agent, kind="other", payload={}, idempotency_key="menu-42")
    assert outcome.error is not None and outcome.error.code == "conflict"
    assert len((await world.ok("jobs_list", world.agent))["items"]) == 1


@pytest.mark.parametrize(
    ("arguments", "rule"),
    [
        ({"payload": "x" * (256 * 1024 + 1)}, "256 KiB"),
        ({"queue": "Images!"}, "lowercase"),
        ({"queue": ""}, "lowercase"),
        ({"kind": "9lives"}, "starting with a letter"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 101}, "max_attempts"),
        ({"delay_seconds": -1}, "delay_seconds"),
        ({"priority": 5000}, "priority"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"run_at": "2026-11-30T06:00:00+00:00", "delay_seconds": 5}, "not both"),
        ({"run_at": "2026-11-30T06:00:00"}, "run_at"),
        ({"payload": {"score": float("nan")}}, "NaN"),
        ({"payload": [float("inf")]}, "NaN or infinity"),
    ],
)
async def test_bad_enqueue_input_is_invalid_naming_the_rule_and_nothing_is_enqueued(
    world: World, arguments: dict[str, Any], rule: str
) -> None:
    outcome = await world.call("jobs_enqueue", world.agent, **({"kind": "k", "payload": {}} | arguments))
    assert outcome.error is not None and outcome.error.code == "invalid_argument"
    assert rule in outcome.error.message
    assert (await world.ok("jobs_list", world.agent))["items"] == []


async def test_a_payload_over_the_limit_points_at_storage(world: World) -> None:
    outcome = await world.call("jobs_enqueue", world.agent, kind="k", payload=["x" * 300_000])
    assert outcome.error is not None and "storage_put_object" in (outcome.error.hint or "")
    assert outcome.error.message.startswith("payload is")


async def test_a_result_over_the_limit_is_refused_and_the_job_keeps_running(world: World) -> None:
    made = await _enqueue(world)
    (job,) = await _claim(world)
    args = {"job_id": job["id"], "lease_token": job["lease_token"]}
    outcome = await world.call("jobs_complete", world.agent, **args, result="x" * 300_000)
    assert outcome.error is not None and outcome.error.code == "invalid_argument"
    assert outcome.error.message.startswith("result is")
    assert (await world.ok("jobs_get", world.agent, job_id=made["id"]))["state"] == "running"


async def test_a_run_at_in_the_past_runs_now(world: World, clock: Clock) -> None:
    made = await _enqueue(world, run_at=(clock.now - timedelta(days=1)).isoformat())
    assert made["next_run_at"] == clock.now.isoformat().replace("+00:00", "Z")
    assert [j["id"] for j in await _claim(world)] == [made["id"]]


async def test_an_unknown_job_and_another_tenants_job_are_the_same_not_found(world: World) -> None:
    async with world.dispatcher.runtime.db.transaction() as conn:
        bob = await identity.create_principal(conn, kind="user", name="bob", email="bob@example.com")
        await tenants.create_tenant(conn, slug="globex", name="Globex", owner=bob)
        _, bob_key = await identity.create_key(
            conn, principal_id=bob.id, tenant_id=None, name="k", scopes=None, expires_at=None, created_by=None
        )
    theirs = (await world.ok("jobs_enqueue", bob_key, kind="k", payload=1))["id"]
    missing = "job_" + "0" * 32
    answers = []
    for job_id in (theirs, missing):
        for tool in ("jobs_get", "jobs_cancel", "jobs_retry"):
            outcome = await world.call(tool, world.agent, job_id=job_id)
            assert outcome.error is not None and outcome.error.code == "not_found", tool
            answers.append((tool, outcome.error.message.replace(job_id, "<id>"), outcome.error.hint))
    assert answers[:3] == answers[3:]
    assert (await world.ok("jobs_get", bob_key, job_id=theirs))["state"] == "queued"


async def test_jobs_list_is_newest_first_filters_and_pages(world: World, clock: Clock) -> None:
    ids = []
    for i in range(5):
        ids.append((await _enqueue(world, kind="a" if i % 2 else "b", queue="q1"))["id"])
        clock.advance(1)
    seen: list[str] = []
    cursor = None
    while True:
        page = await world.ok("jobs_list", world.agent, limit=2, cursor=cursor)
        seen += [item["id"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == ids[::-1]
    only_a = await world.ok("jobs_list", world.agent, kind="a")
    assert [i["id"] for i in only_a["items"]] == [ids[3], ids[1]]
    assert (await world.ok("jobs_list", world.agent, state="running"))["items"] == []
    assert await world.code("jobs_list", world.agent, cursor="bm90LWEtY3Vyc29y") == "invalid_argument"


async def test_jobs_list_pages_never_repeat_a_newer_job_whose_id_sorts_lower(
    world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ids are random, so a newer job's id may sort below an older one's: the cursor's id only breaks
    # ties within one instant. Each job here gets a lower id than the one before it.
    countdown = iter(range(99, 0, -1))
    monkeypatch.setattr(jobs, "new_id", lambda prefix: f"{prefix}_{next(countdown):032x}")
    ids = []
    for _ in range(3):
        ids.append((await _enqueue(world))["id"])
        clock.advance(1)
    seen: list[str] = []
    cursor = None
    while len(seen) <= len(ids):
        page = await world.ok("jobs_list", world.agent, limit=1, cursor=cursor)
        seen += [item["id"] for item in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == ids[::-1]


async def test_cancelling_a_queued_job_is_immediate_and_a_second_cancel_names_its_state(world: World) -> None:
    made = await _enqueue(world)
    cancelled = await world.ok("jobs_cancel", world.agent, job_id=made["id"])
    assert (cancelled["state"], cancelled["cancel_requested"]) == ("cancelled", False)
    outcome = await world.call("jobs_cancel", world.agent, job_id=made["id"])
    assert outcome.error is not None and outcome.error.code == "failed_precondition"
    assert "cancelled" in outcome.error.message
    assert await _claim(world) == []


async def test_cancelling_a_running_job_is_seen_on_its_next_heartbeat_and_ends_it_cancelled(world: World) -> None:
    made = await _enqueue(world)
    (job,) = await _claim(world)
    cancelled = await world.ok("jobs_cancel", world.agent, job_id=made["id"])
    assert (cancelled["state"], cancelled["cancel_requested"]) == ("running", True)
    beat = await world.ok("jobs_heartbeat", world.agent, job_id=job["id"], lease_token=job["lease_token"])
    assert beat["cancel_requested"] is True
    ended = await world.ok("jobs_fail", world.agent, job_id=job["id"], lease_token=job["lease_token"], error="stop")
    assert ended["state"] == "cancelled"
    again = await world.ok("jobs_retry", world.agent, job_id=made["id"])
    assert (again["state"], again["cancel_requested"]) == ("queued", False)


async def test_retry_requeues_failed_dead_and_cancelled_jobs_with_attempts_reset(world: World) -> None:
    made = await _enqueue(world, max_attempts=1)
    (job,) = await _claim(world)
    dead = await world.ok("jobs_fail", world.agent, job_id=job["id"], lease_token=job["lease_token"], error="x")
    assert (dead["state"], dead["attempt"]) == ("dead", 1)
    again = await world.ok("jobs_retry", world.agent, job_id=made["id"])
    assert (again["state"], again["attempt"]) == ("queued", 0)
    (job,) = await _claim(world)
    await world.ok("jobs_complete", world.agent, job_id=job["id"], lease_token=job["lease_token"], result=[1])
    outcome = await world.call("jobs_retry", world.agent, job_id=made["id"])
    assert outcome.error is not None and outcome.error.code == "failed_precondition"
    assert "succeeded" in outcome.error.message


async def test_a_completed_job_keeps_its_result_and_a_second_completion_is_a_conflict(world: World) -> None:
    made = await _enqueue(world)
    (job,) = await _claim(world)
    assert job["attempt"] == 1 and job["lease_token"]
    args = {"job_id": job["id"], "lease_token": job["lease_token"]}
    beat = await world.ok("jobs_heartbeat", world.agent, **args, progress=0.5, message="2 of 4 dishes")
    assert beat["cancel_requested"] is False
    shown = await world.ok("jobs_get", world.agent, job_id=made["id"])
    assert (shown["progress"], shown["progress_message"]) == (0.5, "2 of 4 dishes")
    done = await world.ok("jobs_complete", world.agent, **args, result={"dishes": 4})
    assert done["state"] == "succeeded"
    assert await world.code("jobs_complete", world.agent, **args, result={"dishes": 5}) == "conflict"
    assert (await world.ok("jobs_get", world.agent, job_id=made["id"]))["result"] == {"dishes": 4}


async def test_a_wrong_lease_token_is_a_conflict(world: World) -> None:
    await _enqueue(world)
    (job,) = await _claim(world)
    for tool in ("jobs_heartbeat", "jobs_complete", "jobs_fail"):
        extra = {"error": "x"} if tool == "jobs_fail" else {}
        assert await world.code(tool, world.agent, job_id=job["id"], lease_token="forged", **extra) == "conflict"


async def test_claims_take_higher_priority_first_and_honour_queues_and_kinds(world: World) -> None:
    low = await _enqueue(world, priority=-1)
    high = await _enqueue(world, priority=10)
    other_queue = await _enqueue(world, queue="images")
    other_kind = await _enqueue(world, kind="resize")
    assert [j["id"] for j in await _claim(world, queues=["default"], kinds=["describe_dishes"], limit=5)] == [
        high["id"],
        low["id"],
    ]
    assert [j["id"] for j in await _claim(world, queues=["images"])] == [other_queue["id"]]
    assert [j["id"] for j in await _claim(world, kinds=["resize"])] == [other_kind["id"]]
    assert await world.code("jobs_claim", world.agent, queues=["Bad Queue"]) == "invalid_argument"


async def test_a_worker_key_may_claim_but_not_enqueue(world: World) -> None:
    worker = await world.ok("agents_create", world.owner, name="menu-worker", role="worker")
    key = (await world.ok("keys_create", world.owner, name="w", principal_id=worker["principal"]["id"]))["token"]
    assert await world.code("jobs_enqueue", key, kind="k", payload=1) == "permission_denied"
    await _enqueue(world)
    assert len((await world.ok("jobs_claim", key))["jobs"]) == 1


async def test_empty_claims_are_recorded_in_aggregate_and_claims_that_got_jobs_name_them(
    world: World, probe: StoreProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await probe.audit_count()
    # The calls are recorded at one instant: a bucket is folded once its minute has closed, so a loop
    # straddling a minute on the wall clock would fold the first minute's claims into an event.
    called_at = utcnow()
    monkeypatch.setattr(dispatch, "utcnow", lambda: called_at)
    for _ in range(200):
        assert await _claim(world) == []
    assert await probe.audit_count() == before
    monkeypatch.undo()
    async with world.dispatcher.runtime.db.transaction() as conn:
        assert await flush(conn) == 1
    events = await probe.audit_events()
    (folded,) = [e for e in events if e["operation"] == "jobs_claim"]
    assert folded["args"]["count"] == 200
    made = await _enqueue(world)
    (job,) = await _claim(world)
    claims = [e for e in await probe.audit_events() if e["operation"] == "jobs_claim"]
    assert claims[-1]["args"]["claimed"] == [{"job_id": made["id"], "attempt": 1}]
    await world.ok("jobs_heartbeat", world.agent, job_id=job["id"], lease_token=job["lease_token"], progress=0.1)
    (beat,) = [e for e in await probe.audit_events() if e["operation"] == "jobs_heartbeat"]
    assert beat["args"]["lease_token"] == "[redacted]" and job["lease_token"] not in str(beat)


async def test_a_job_reads_as_a_resource(world: World) -> None:
    from scalemule.dispatch import Invocation
    from scalemule.operations import resource_for

    made = await _enqueue(world)
    uri = f"scalemule://tenants/acme/jobs/{made['id']}"
    found = resource_for(uri)
    assert found is not None and found[0].name == "jobs_get"
    outcome = await world.dispatcher.call(Invocation("jobs_get", found[2], world.agent, "cli", resource=uri))
    assert outcome.result is not None and outcome.result["id"] == made["id"]
