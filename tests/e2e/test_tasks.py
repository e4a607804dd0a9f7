"""MCP Tasks (io.modelcontextprotocol/tasks) over stdio and streamable HTTP, with a raw JSON-RPC client
(the SDK's client has no task support). jobs_run's jobs are claimed and finished beside the server,
through the same dispatch path a worker uses, so each test moves the job exactly when it means to;
audit_verify's tasks are run by the servers themselves.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from itertools import count
from typing import Any

import anyio
import httpx2
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from scalemule.core import jobs
from scalemule.dispatch import Dispatcher, Invocation
from tests.e2e.conftest import SCALEMULE, Deployment, http_server

pytestmark = pytest.mark.anyio

TASKS = "io.modelcontextprotocol/tasks"
VERSION = "2026-07-28"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
# A request's answer: the JSON-RPC response object ("result" or "error").
Rpc = Callable[..., Awaitable[dict[str, Any]]]


def meta(*, tasks: bool) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"extensions": {TASKS: {}}} if tasks else {}
    return {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    }


def params_of(method: str, params: dict[str, Any], tasks: bool) -> dict[str, Any]:
    return {**params, "_meta": meta(tasks=tasks)}


class StdioRpc:
    """Newline-delimited JSON-RPC to ``scalemule serve`` over its stdin and stdout."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None and process.stdin is not None
        self.lines = BufferedByteReceiveStream(process.stdout)
        self.ids = count(1)

    async def __call__(self, method: str, params: dict[str, Any], *, tasks: bool = True) -> dict[str, Any]:
        request_id = next(self.ids)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params_of(method, params, tasks)}
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps(message).encode() + b"\n")
        with anyio.fail_after(60):
            while True:
                answer = json.loads(await self.lines.receive_until(b"\n", 1 << 24))
                if answer.get("id") == request_id:
                    return dict(answer)


@asynccontextmanager
async def stdio_rpc(deployment: Deployment, key: str, *serve_args: str) -> AsyncIterator[StdioRpc]:
    env = deployment.env | {"SCALEMULE_API_KEY": key}
    with (deployment.logs / "stdio-tasks.log").open("a") as errlog:
        process = await anyio.open_process([SCALEMULE, "serve", *serve_args], env=env, stderr=errlog)
        try:
            yield StdioRpc(process)
        finally:
            process.terminate()
            await process.wait()


class HttpRpc:
    """One JSON-RPC request per POST, with the 2026-07-28 routing headers (no session)."""

    def __init__(self, url: str, key: str, *, name_header: bool = True, toolsets: str | None = None) -> None:
        self.url, self.key, self.name_header, self.toolsets = url, key, name_header, toolsets
        self.ids = count(1)

    async def __call__(self, method: str, params: dict[str, Any], *, tasks: bool = True) -> dict[str, Any]:
        headers = ACCEPT | {
            "Authorization": f"Bearer {self.key}",
            "MCP-Protocol-Version": VERSION,
            "Mcp-Method": method,
        }
        name = params.get("name") if method == "tools/call" else params.get("taskId")
        if name is not None and (self.name_header or method == "tools/call"):
            headers["Mcp-Name"] = str(name)
        if self.toolsets is not None:
            headers["X-MCP-Toolsets"] = self.toolsets
        body = {"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params_of(method, params, tasks)}
        async with httpx2.AsyncClient(timeout=60) as http:
            response = await http.post(self.url, json=body, headers=headers)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
            return dict(json.loads(data[-1]))
        return dict(response.json())


@pytest.fixture(scope="module")
def url(deployment: Deployment) -> Iterator[str]:
    with http_server(deployment) as endpoint:
        yield endpoint


@pytest.fixture(params=["stdio", "http"])
async def agent(request: pytest.FixtureRequest, deployment: Deployment) -> AsyncIterator[Rpc]:
    """A raw client acting with the agent's key (bound to the tenant), over each transport."""
    if request.param == "http":
        yield HttpRpc(request.getfixturevalue("url"), deployment.agent_key)
        return
    async with stdio_rpc(deployment, deployment.agent_key) as rpc:
        yield rpc


async def owner_call(deployment: Deployment, operation: str, **arguments: Any) -> dict[str, Any]:
    """Act beside the server as the owner (who holds jobs:work), through dispatch."""
    # The owner's key is personal: name the tenant, as other tests may have added the owner to more.
    async with deployment.beside() as (dispatcher, _):
        return await _call(dispatcher, deployment.owner_key, operation, {"tenant": deployment.slug, **arguments})


async def _call(dispatcher: Dispatcher, key: str, operation: str, arguments: dict[str, Any]) -> dict[str, Any]:
    outcome = await dispatcher.call(Invocation(operation, arguments, key, "e2e"))
    assert outcome.error is None, outcome.error
    assert outcome.result is not None
    return outcome.result


async def claim(deployment: Deployment, job_id: str) -> str:
    """Claim ``job_id`` as a worker would; its lease token."""
    with anyio.fail_after(30):
        while True:
            claimed = await owner_call(deployment, "jobs_claim", tenant=deployment.slug, kinds=["tasks.e2e"])
            taken = {j["id"]: j["lease_token"] for j in claimed["jobs"]}
            if job_id in taken:
                return str(taken[job_id])
            assert not taken, f"claimed another job: {taken}"
            await anyio.sleep(0.02)  # the job is committed; a claim that raced its due time looks again


async def run_task(rpc: Rpc, **arguments: Any) -> dict[str, Any]:
    answer = await rpc("tools/call", {"name": "jobs_run", "arguments": {"kind": "tasks.e2e", **arguments}})
    result = answer["result"]
    assert result["resultType"] == "task", result
    return dict(result)


async def get_task(rpc: Rpc, task_id: str) -> dict[str, Any]:
    answer = await rpc("tasks/get", {"taskId": task_id})
    return dict(answer["result"])


async def test_the_server_advertises_the_tasks_extension(agent: Rpc) -> None:
    answer = await agent("server/discover", {})
    assert answer["result"]["capabilities"]["extensions"] == {TASKS: {}}


async def test_a_task_is_created_once_committed_and_polled_to_the_jobs_result(
    deployment: Deployment, agent: Rpc
) -> None:
    created = await run_task(agent, payload={"n": 1}, timeout_seconds=60)
    assert created["status"] == "working" and created["ttlMs"] == 7 * 24 * 3600 * 1000
    assert created["pollIntervalMs"] == 3000 and "result" not in created
    first = await get_task(agent, created["taskId"])
    assert first["status"] == "working" and first["statusMessage"].startswith("queued")
    assert first["resultType"] == "complete" and first["createdAt"] == created["createdAt"]
    token = await claim(deployment, created["taskId"])
    await owner_call(
        deployment, "jobs_heartbeat", job_id=created["taskId"], lease_token=token, progress=0.5, message="halfway"
    )
    running = await get_task(agent, created["taskId"])
    assert running["status"] == "working" and "50%: halfway (attempt 1 of 5)" in running["statusMessage"]
    await owner_call(deployment, "jobs_complete", job_id=created["taskId"], lease_token=token, result={"n": 2})
    done = await get_task(agent, created["taskId"])
    assert done["status"] == "completed" and done["result"]["isError"] is False
    outcome = done["result"]["structuredContent"]
    assert outcome["result"] == {"n": 2} and outcome["state"] == "succeeded" and outcome["done"] is True
    assert json.loads(done["result"]["content"][0]["text"]) == outcome


async def test_a_task_cancelled_mid_run_asks_its_job_to_stop_and_ends_cancelled(
    deployment: Deployment, agent: Rpc
) -> None:
    created = await run_task(agent, payload={})
    token = await claim(deployment, created["taskId"])
    ack = await agent("tasks/cancel", {"taskId": created["taskId"]})
    assert ack["result"] == {"resultType": "complete"} or set(ack["result"]) <= {"resultType", "_meta"}
    seen = await owner_call(deployment, "jobs_heartbeat", job_id=created["taskId"], lease_token=token)
    assert seen["cancel_requested"] is True
    assert "cancellation requested" in (await get_task(agent, created["taskId"]))["statusMessage"]
    await owner_call(deployment, "jobs_fail", job_id=created["taskId"], lease_token=token, error="stopped")
    assert (await get_task(agent, created["taskId"]))["status"] == "cancelled"
    again = await agent("tasks/cancel", {"taskId": created["taskId"]})
    assert "result" in again  # cancelling a finished task is still acknowledged


async def test_a_dead_job_surfaces_as_a_completed_task_with_an_is_error_result(
    deployment: Deployment, agent: Rpc
) -> None:
    created = await run_task(agent, payload={}, max_attempts=1)
    token = await claim(deployment, created["taskId"])
    await owner_call(deployment, "jobs_fail", job_id=created["taskId"], lease_token=token, error="menu text unreadable")
    dead = await get_task(agent, created["taskId"])
    assert dead["status"] == "completed" and dead["result"]["isError"] is True
    assert dead["result"]["structuredContent"]["error"]["code"] == "failed_precondition"
    assert "menu text unreadable" in dead["result"]["content"][0]["text"]


async def test_another_tenants_task_id_is_refused_like_an_unknown_one(deployment: Deployment, agent: Rpc) -> None:
    async with deployment.beside() as (dispatcher, _):
        # The module's store is shared by both transports: the second run finds the tenant made.
        made = await dispatcher.call(
            Invocation("tenants_create", {"slug": "rival-tasks", "name": "Rival"}, deployment.owner_key, "e2e")
        )
    assert made.error is None or made.error.code == "already_exists"
    theirs = await owner_call(deployment, "jobs_enqueue", tenant="rival-tasks", kind="tasks.e2e", payload={})
    foreign = await agent("tasks/get", {"taskId": theirs["id"]})
    unknown = await agent("tasks/get", {"taskId": "job_" + "0" * 26})
    assert foreign["error"]["code"] == unknown["error"]["code"] == -32602
    assert foreign["error"]["data"]["code"] == unknown["error"]["data"]["code"] == "not_found"
    cancel = await agent("tasks/cancel", {"taskId": theirs["id"]})
    assert cancel["error"]["data"]["code"] == "not_found"
    job = await owner_call(deployment, "jobs_get", tenant="rival-tasks", job_id=theirs["id"])
    assert job["cancel_requested"] is False and job["state"] == "queued"


async def test_a_client_without_the_extension_gets_an_ordinary_result_never_a_task(
    deployment: Deployment, agent: Rpc
) -> None:
    answer = await agent(
        "tools/call",
        {"name": "jobs_run", "arguments": {"kind": "tasks.e2e", "payload": {}, "wait_seconds": 0.2}},
        tasks=False,
    )
    assert "result" in answer, answer
    result = answer["result"]
    assert result["resultType"] == "complete" and result["isError"] is False
    outcome = result["structuredContent"]
    assert outcome["done"] is False and outcome["follow"] == f"jobs_get(job_id='{outcome['job_id']}')"
    refused = await agent("tasks/get", {"taskId": outcome["job_id"]}, tasks=False)
    assert refused["error"]["code"] == -32021
    await owner_call(deployment, "jobs_cancel", job_id=outcome["job_id"])


async def test_a_waiting_call_returns_the_result_once_the_job_finishes(deployment: Deployment, agent: Rpc) -> None:
    answers: list[dict[str, Any]] = []

    async def call() -> None:
        arguments = {"kind": "tasks.e2e", "payload": {"n": 7}, "wait_seconds": 30}
        answers.append(await agent("tools/call", {"name": "jobs_run", "arguments": arguments}, tasks=False))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        with anyio.fail_after(30):
            while True:
                found = await owner_call(deployment, "jobs_list", state="queued", kind="tasks.e2e")
                mine = [j["id"] for j in found["items"]]
                if mine:
                    break
                await anyio.sleep(0.02)  # the call has not enqueued yet
        token = await claim(deployment, mine[0])
        await owner_call(deployment, "jobs_complete", job_id=mine[0], lease_token=token, result={"n": 8})
    result = answers[0]["result"]
    assert result["isError"] is False and result["structuredContent"]["result"] == {"n": 8}


async def test_polls_are_tallied_not_recorded_one_event_each(deployment: Deployment, agent: Rpc) -> None:
    created = await run_task(agent, payload={})
    for _ in range(5):
        await get_task(agent, created["taskId"])
    async with deployment.beside() as (_, probe):
        events = await probe.audit_events()
    assert [e for e in events if e["operation"] == "jobs_run" and e["outcome"] == "ok"]
    # Polls are counted into their minute's aggregate: any tasks_get event is a folded one, with a count.
    polls = [e for e in events if e["operation"] == "tasks_get" and e["outcome"] == "ok"]
    assert all("count" in e["args"] for e in polls)
    await owner_call(deployment, "jobs_cancel", job_id=created["taskId"])


async def test_tasks_update_is_a_clear_json_rpc_error(agent: Rpc) -> None:
    answer = await agent("tasks/update", {"taskId": "job_x", "inputResponses": {}})
    assert answer["error"]["code"] == -32602 and "asks for no input" in answer["error"]["message"]


async def test_a_task_made_on_one_server_is_polled_and_cancelled_on_another_across_restarts(
    postgres_deployment: Deployment,
) -> None:
    d = postgres_deployment
    with http_server(d) as one, http_server(d):
        created = await run_task(HttpRpc(one, d.agent_key), payload={})
    with http_server(d) as one, http_server(d) as two:
        other = HttpRpc(two, d.agent_key, name_header=False)  # Mcp-Name is accepted, not required
        assert (await get_task(other, created["taskId"]))["status"] == "working"
        token = await claim(d, created["taskId"])
        assert "result" in await other("tasks/cancel", {"taskId": created["taskId"]})
        await owner_call(d, "jobs_fail", job_id=created["taskId"], lease_token=token, error="stopped")
        assert (await get_task(HttpRpc(one, d.agent_key), created["taskId"]))["status"] == "cancelled"


# --- audit_verify: a task the server runs itself ---------------------------------------------------

AUDIT = "default,audit"
Connect = Callable[[str], AbstractAsyncContextManager[Rpc]]


@pytest.fixture(params=["stdio", "http"])
def connect(request: pytest.FixtureRequest, deployment: Deployment) -> Connect:
    """Opens a raw client with a given key, over each transport, to a server serving the audit toolset."""
    url = request.getfixturevalue("url") if request.param == "http" else None

    @asynccontextmanager
    async def open_rpc(key: str) -> AsyncIterator[Rpc]:
        if url is not None:
            yield HttpRpc(url, key, toolsets=AUDIT)
            return
        async with stdio_rpc(deployment, key, "--toolsets", AUDIT) as rpc:
            yield rpc

    return open_rpc


async def verify_task(rpc: Rpc, **arguments: Any) -> dict[str, Any]:
    answer = await rpc("tools/call", {"name": "audit_verify", "arguments": arguments})
    created = answer["result"]
    assert created["resultType"] == "task" and created["status"] == "working", created
    assert "result" not in created and created["taskId"].startswith("job_")
    return dict(created)


async def until_done(rpc: Rpc, task_id: str) -> dict[str, Any]:
    """Poll ``task_id`` until it is no longer working; the Task then."""
    with anyio.fail_after(60):
        while True:
            task = await get_task(rpc, task_id)
            if task["status"] != "working":
                return task
            await anyio.sleep(0.05)  # the server runs it in the background


async def test_a_task_aware_verify_is_polled_to_the_report_and_others_get_the_report_itself(
    deployment: Deployment, connect: Connect
) -> None:
    async with connect(deployment.agent_key) as rpc:
        created = await verify_task(rpc)
        done = await until_done(rpc, created["taskId"])
        plain = (await rpc("tools/call", {"name": "audit_verify", "arguments": {}}, tasks=False))["result"]
    assert done["status"] == "completed" and done["result"]["isError"] is False
    report = done["result"]["structuredContent"]
    assert report["ok"] is True and report["problem"] is None and report["from_seq"] == 1
    assert json.loads(done["result"]["content"][0]["text"]) == report
    assert plain["resultType"] == "complete" and "taskId" not in plain and plain["isError"] is False
    assert plain["structuredContent"]["ok"] is True and set(plain["structuredContent"]) == set(report)
    async with deployment.beside() as (_, probe):
        events = await probe.audit_events()
    made = [e for e in events if e["args"].get("task_id") == created["taskId"]]
    run = [e for e in events if e["request_id"] == created["taskId"] and e["transport"] == "task"]
    assert [e["operation"] for e in made] == ["audit_verify"] and made[0]["transport"] != "task"
    assert [(e["operation"], e["outcome"]) for e in run] == [("audit_verify", "ok")]
    assert run[0]["actor_id"] == made[0]["actor_id"] and run[0]["key_id"] == made[0]["key_id"]


async def test_a_verify_that_fails_when_it_runs_completes_with_the_tools_error(
    deployment: Deployment, connect: Connect
) -> None:
    async with connect(deployment.agent_key) as rpc:
        done = await until_done(rpc, (await verify_task(rpc, from_seq=10**9))["taskId"])
    assert done["status"] == "completed" and done["result"]["isError"] is True
    assert done["result"]["structuredContent"]["error"]["code"] == "invalid_argument"
    assert done["result"]["content"][0]["text"].startswith("invalid_argument: from_seq 1000000000")


async def test_a_verify_the_caller_may_not_run_is_refused_at_once_never_as_a_task(
    deployment: Deployment, connect: Connect
) -> None:
    name = f"no-audit-{secrets.token_hex(4)}"
    agent = await owner_call(deployment, "agents_create", name=name, role="worker")
    made = await owner_call(deployment, "keys_create", name=name, principal_id=agent["principal"]["id"])
    async with connect(str(made["token"])) as rpc:
        answer = await rpc("tools/call", {"name": "audit_verify", "arguments": {}})
    result = answer["result"]
    assert result["resultType"] == "complete" and "taskId" not in result and result["isError"] is True
    assert result["structuredContent"]["error"]["code"] == "permission_denied"
    assert "audit:read" in result["content"][0]["text"]


async def test_a_verify_task_is_answered_by_any_server_and_finished_by_another_when_its_own_died(
    postgres_deployment: Deployment,
) -> None:
    d = postgres_deployment
    # A server that died holding a task: the task is made and claimed beside, under a one-second lease.
    async with d.beside() as (dispatcher, _):
        made = await dispatcher.call(Invocation("audit_verify", {}, d.agent_key, "e2e", accepts_task=True))
        assert made.task and made.result is not None
        orphan = made.result["task_id"]
        async with dispatcher.runtime.db.transaction() as conn:
            await jobs.claim_server(
                conn, worker_id="srv_dead", limit=1, lease=timedelta(seconds=1), now=dispatcher.runtime.clock()
            )
    with http_server(d, "--toolsets", AUDIT) as two:
        other = HttpRpc(two, d.agent_key)
        with http_server(d, "--toolsets", AUDIT) as one:
            created = await verify_task(HttpRpc(one, d.agent_key))
        # The server it was made on has stopped; the other answers for it, and for the orphan.
        done = await until_done(other, created["taskId"])
        assert done["status"] == "completed" and done["result"]["structuredContent"]["ok"] is True
        rescued = await until_done(other, orphan)
    assert rescued["status"] == "completed" and rescued["result"]["structuredContent"]["ok"] is True
    assert "attempt 2 of 3" in rescued["statusMessage"]
