"""Operations run as MCP Tasks by the server (audit_verify): queued through dispatch for a task-aware
caller, run by a TaskRunner with the caller's rights, read back through tasks_get, on SQLite and
PostgreSQL. Runs are driven one pass at a time (``TaskRunner.run_due``), so each test moves the task
exactly when it means to.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import anyio
import pytest

from scalemule.core import jobs
from scalemule.core.errors import Conflict
from scalemule.dispatch import Invocation, Outcome
from scalemule.operations import REGISTRY
from scalemule.operations.audit import AuditVerifyArgs, VerifyView
from scalemule.operations.base import Call
from scalemule.surfaces import tasks as wire
from scalemule.worker.server_tasks import TaskRunner
from tests.conftest import StoreProbe, World

pytestmark = pytest.mark.anyio


async def _as_task(world: World, token: str, operation: str = "audit_verify", **arguments: Any) -> Outcome:
    """Call ``operation`` as a client that takes MCP tasks would (over HTTP)."""
    invocation = Invocation(operation, arguments, token, "http", client_name="tests", accepts_task=True)
    return await world.dispatcher.call(invocation)


async def _started(world: World, token: str, **arguments: Any) -> str:
    outcome = await _as_task(world, token, **arguments)
    assert outcome.error is None and outcome.task, outcome
    assert outcome.result is not None and outcome.result["status"] == "working"
    return str(outcome.result["task_id"])


async def _agent_key(world: World, name: str, role: str, scopes: list[str] | None = None) -> str:
    agent = await world.ok("agents_create", world.owner, tenant="acme", name=name, role=role)
    options: dict[str, Any] = {} if scopes is None else {"scopes": scopes}
    principal_id = agent["principal"]["id"]
    made = await world.ok("keys_create", world.owner, tenant="acme", name=name, principal_id=principal_id, **options)
    return str(made["token"])


async def _answer(world: World, token: str, task_id: str) -> dict[str, Any]:
    """The Task a client reads on tasks/get, as the wire carries it."""
    return wire.task(await world.ok("tasks_get", token, task_id=task_id))


async def test_a_task_aware_verify_is_queued_then_run_to_the_report_the_tool_returns(
    world: World, probe: StoreProbe
) -> None:
    task_id = await _started(world, world.agent)
    created = next(e for e in await probe.audit_events() if e["args"].get("task_id") == task_id)
    assert (created["operation"], created["transport"], created["outcome"]) == ("audit_verify", "http", "ok")
    assert (await _answer(world, world.agent, task_id))["status"] == "working"
    assert await TaskRunner(world.dispatcher).run_due() == 1
    done = await _answer(world, world.agent, task_id)
    assert done["status"] == "completed" and done["result"]["isError"] is False
    report = done["result"]["structuredContent"]
    assert VerifyView.model_validate(report).ok and report["from_seq"] == 1 and report["events"] >= 2
    assert done["result"] == wire.ok_result(report)
    direct = await world.ok("audit_verify", world.agent)
    assert set(direct) == set(report) and direct["ok"] is report["ok"] is True
    run = [e for e in await probe.audit_events() if e["request_id"] == task_id and e["transport"] == "task"]
    assert [(e["operation"], e["outcome"], e["actor_name"]) for e in run] == [("audit_verify", "ok", "acme-agent")]
    assert run[0]["args"] == {"from_seq": 1, "to_seq": None, "tenant": "acme"}


async def test_a_client_without_tasks_gets_the_report_at_once(world: World) -> None:
    outcome = await world.dispatcher.call(Invocation("audit_verify", {}, world.agent, "http"))
    assert outcome.error is None and not outcome.task and outcome.result is not None
    assert outcome.result["ok"] is True
    assert (await world.ok("jobs_list", world.owner, queue=jobs.SERVER_QUEUE))["items"] == []


async def test_a_caller_without_audit_read_is_refused_at_once_and_no_task_is_made(world: World) -> None:
    worker = await _agent_key(world, "worker", "worker")
    outcome = await _as_task(world, worker)
    assert outcome.error is not None and outcome.error.code == "permission_denied" and not outcome.task
    invalid = await _as_task(world, world.agent, from_seq=0)
    assert invalid.error is not None and invalid.error.code == "invalid_argument"
    assert (await world.ok("jobs_list", world.owner, queue=jobs.SERVER_QUEUE))["items"] == []


async def test_a_caller_that_could_not_read_its_task_back_gets_the_report_instead(world: World) -> None:
    auditor = await _agent_key(world, "auditor", "viewer", scopes=["audit:read"])
    outcome = await _as_task(world, auditor)
    assert outcome.error is None and not outcome.task
    assert outcome.result is not None and outcome.result["ok"] is True


async def test_a_tenants_workers_never_claim_a_server_task_nor_enqueue_into_its_queue(world: World) -> None:
    await _started(world, world.agent)
    assert (await world.ok("jobs_claim", world.owner, tenant="acme", limit=10))["jobs"] == []
    refused = await world.code("jobs_claim", world.owner, tenant="acme", queues=[jobs.SERVER_QUEUE])
    assert refused == "invalid_argument"
    smuggled = await world.code("jobs_enqueue", world.agent, kind="audit_verify", payload={}, queue=jobs.SERVER_QUEUE)
    assert smuggled == "invalid_argument"
    async with world.dispatcher.runtime.db.reader() as conn:
        tenant = world.made.tenant.id
        now = world.dispatcher.runtime.clock()
        assert await jobs.due(conn, tenant, queues=None, kinds=None, now=now, up_to=1) == 0
        assert await jobs.server_due(conn, now=now)


async def test_a_server_tasks_report_is_read_with_the_operations_permission(world: World) -> None:
    task_id = await _started(world, world.agent)
    worker = await _agent_key(world, "worker", "worker")  # holds jobs:read, not audit:read
    assert await world.code("tasks_get", worker, task_id=task_id) == "permission_denied"
    assert await world.code("jobs_get", worker, job_id=task_id) == "permission_denied"
    assert await world.code("tasks_cancel", worker, task_id=task_id) == "permission_denied"
    writer = await _agent_key(world, "writer", "developer", scopes=["jobs:read", "jobs:write"])
    assert await world.code("jobs_cancel", writer, job_id=task_id) == "permission_denied"
    assert (await world.ok("jobs_get", world.owner, tenant="acme", job_id=task_id))["queue"] == jobs.SERVER_QUEUE


async def test_a_verify_that_fails_when_it_runs_completes_with_the_tools_error_and_is_not_retried(
    world: World,
) -> None:
    task_id = await _started(world, world.agent, from_seq=10**6)
    await TaskRunner(world.dispatcher).run_due()
    done = await _answer(world, world.agent, task_id)
    assert done["status"] == "completed" and done["result"]["isError"] is True
    error = done["result"]["structuredContent"]["error"]
    assert error["code"] == "invalid_argument" and "from_seq" in error["message"] and error["hint"]
    assert done["result"]["content"][0]["text"].startswith("invalid_argument: ")
    job = await world.ok("jobs_get", world.owner, tenant="acme", job_id=task_id)
    assert (job["state"], job["attempt"]) == ("dead", 1)
    assert await world.code("jobs_retry", world.owner, tenant="acme", job_id=task_id) == "failed_precondition"


async def test_a_task_whose_key_was_revoked_ends_unauthenticated(world: World) -> None:
    token = await _agent_key(world, "auditor", "developer")
    task_id = await _started(world, token)
    key_id = (await world.ok("whoami", token))["key"]["id"]
    await world.ok("keys_revoke", world.owner, tenant="acme", key_id=key_id)
    await TaskRunner(world.dispatcher).run_due()
    done = await _answer(world, world.owner, task_id)
    assert done["status"] == "completed" and done["result"]["isError"] is True
    assert done["result"]["structuredContent"]["error"]["code"] == "unauthenticated"


@pytest.fixture
def halfway(monkeypatch: pytest.MonkeyPatch) -> anyio.Event:
    """audit_verify made endless: it reports half done, sets the event, and waits to be stopped."""
    reached = anyio.Event()

    async def slow_verify(call: Call, args: AuditVerifyArgs) -> VerifyView:
        call.report(0.5, "halfway")
        reached.set()
        await anyio.sleep_forever()
        raise AssertionError("a stopped run goes no further")

    monkeypatch.setitem(REGISTRY, "audit_verify", replace(REGISTRY["audit_verify"], handler=slow_verify))
    return reached


async def test_a_task_cancelled_while_it_runs_stops_and_ends_cancelled(
    world: World, probe: StoreProbe, halfway: anyio.Event
) -> None:
    task_id = await _started(world, world.agent)
    runner = TaskRunner(world.dispatcher, beat=0.01)
    with anyio.fail_after(30):  # the run ends only when the cancellation reaches it
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run_due)
            await halfway.wait()
            while True:
                seen = await _answer(world, world.agent, task_id)
                if "50%: halfway" in seen["statusMessage"]:
                    break
                await anyio.sleep(0.01)  # the next heartbeat writes the progress
            assert seen["status"] == "working"
            await world.ok("tasks_cancel", world.agent, task_id=task_id)
    assert (await _answer(world, world.agent, task_id))["status"] == "cancelled"
    run = [e for e in await probe.audit_events() if e["request_id"] == task_id and e["transport"] == "task"]
    assert [e["outcome"] for e in run] == ["cancelled"]


async def test_a_stopping_server_hands_its_running_task_back_to_run_again(
    world: World, probe: StoreProbe, halfway: anyio.Event
) -> None:
    task_id = await _started(world, world.agent)
    runner = TaskRunner(world.dispatcher)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await halfway.wait()
            await runner.stop()
    job = await world.ok("jobs_get", world.owner, tenant="acme", job_id=task_id)
    assert (job["state"], job["attempt"], job["last_error"]) == ("failed", 1, "the server running it stopped")
    assert (await _answer(world, world.agent, task_id))["status"] == "working"  # it runs again shortly
    run = [e for e in await probe.audit_events() if e["request_id"] == task_id and e["transport"] == "task"]
    assert [e["outcome"] for e in run] == ["cancelled"]


async def test_a_task_whose_server_died_is_rescued_and_finished_by_another(world: World) -> None:
    runtime = world.dispatcher.runtime
    now = [runtime.clock()]
    runtime.clock = lambda: now[0]
    task_id = await _started(world, world.agent)
    async with runtime.db.transaction() as conn:
        (dead,) = await jobs.claim_server(conn, worker_id="srv_dead", limit=1, lease=timedelta(seconds=1), now=now[0])
    assert dead.id == task_id and await TaskRunner(world.dispatcher).run_due() == 0
    now[0] += timedelta(seconds=5)  # the dead server's lease runs out
    async with runtime.db.transaction() as conn:
        rescued = await jobs.rescue_expired(conn, now=runtime.clock(), rescuer=jobs.maintenance_principal())
    assert [j.id for j in rescued] == [task_id]
    assert await TaskRunner(world.dispatcher).run_due() == 1
    done = await _answer(world, world.agent, task_id)
    assert done["status"] == "completed" and done["result"]["structuredContent"]["ok"] is True
    assert "attempt 2 of 3" in done["statusMessage"]
    assert dead.lease_token is not None
    with pytest.raises(Conflict):  # the dead server's late write is fenced off
        async with runtime.db.transaction() as conn:
            await jobs.complete(conn, dead.tenant_id, dead.id, dead.lease_token, {"ok": False}, now=runtime.clock())
