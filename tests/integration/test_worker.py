"""The Python worker runtime in-process: handlers, progress, failures, cancellation and a graceful stop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from scalemule.worker import Handlers, JobContext, PermanentError, Worker, WorkerOptions
from tests.conftest import StoreProbe, World

pytestmark = pytest.mark.anyio


class Finished:
    """Records each attempt's resulting state and lets a test wait for a job's."""

    def __init__(self) -> None:
        self.states: dict[str, list[str]] = {}
        self._changed = anyio.Event()

    def __call__(self, job_id: str, state: str) -> None:
        self.states.setdefault(job_id, []).append(state)
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, job_id: str, state: str, *, count: int = 1) -> list[str]:
        with anyio.fail_after(20):
            while self.states.get(job_id, []).count(state) < count:
                await self._changed.wait()
        return self.states[job_id]


@asynccontextmanager
async def running(world: World, handlers: Handlers, finished: Finished, **options: Any) -> AsyncIterator[anyio.Event]:
    stop = anyio.Event()
    worker = Worker(
        world.dispatcher.runtime,
        world.agent,
        handlers,
        WorkerOptions(**({"concurrency": 2, "poll_max": 0.2} | options)),
        on_finished=finished,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run, stop)
        yield stop
        stop.set()


async def test_a_handler_runs_reports_progress_writes_storage_and_its_result_is_kept(world: World) -> None:
    handlers, finished = Handlers(), Finished()

    @handlers("describe")
    async def describe(payload: Any, ctx: JobContext) -> Any:
        assert ctx.attempt == 1 and ctx.kind == "describe"
        await ctx.progress(0.5, "half")
        stored = await ctx.put_object(f"out/{ctx.job_id}.txt", f"dishes: {payload['n']}")
        return {"key": stored["key"], "read": (await ctx.get_object(stored["key"])).decode()}

    async with running(world, handlers, finished):
        made = await world.ok("jobs_enqueue", world.agent, kind="describe", payload={"n": 3})
        assert await finished.until(made["id"], "succeeded") == ["succeeded"]
    job = await world.ok("jobs_get", world.agent, job_id=made["id"])
    assert job["result"] == {"key": f"out/{made['id']}.txt", "read": "dishes: 3"}
    assert job["progress"] == 1.0 and job["progress_message"] == "half"


async def test_a_raised_exception_fails_the_attempt_and_the_job_succeeds_on_a_later_one(world: World) -> None:
    handlers, finished = Handlers(), Finished()
    tries: list[int] = []

    @handlers("flaky")
    async def flaky(payload: Any, ctx: JobContext) -> Any:
        tries.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError(f"upstream timeout on attempt {ctx.attempt}")
        return "ok"

    async with running(world, handlers, finished):
        made = await world.ok("jobs_enqueue", world.agent, kind="flaky", payload=None)
        for attempts in (1, 2):
            await finished.until(made["id"], "failed", count=attempts)
            await _due_now(world, made["id"])  # skip the backoff instead of waiting for it
        assert await finished.until(made["id"], "succeeded") == ["failed", "failed", "succeeded"]
    assert tries == [1, 2, 3]
    job = await world.ok("jobs_get", world.agent, job_id=made["id"])
    assert (job["state"], job["attempt"], job["result"]) == ("succeeded", 3, "ok")
    assert "upstream timeout on attempt 2" in job["last_error"]


async def _due_now(world: World, job_id: str) -> None:
    from scalemule.db.tables import jobs

    runtime = world.dispatcher.runtime
    async with runtime.db.transaction() as conn:
        await conn.execute(jobs.update().where(jobs.c.id == job_id).values(run_at=runtime.clock()))


async def test_a_permanent_error_makes_the_job_dead_at_once(world: World) -> None:
    handlers, finished = Handlers(), Finished()

    @handlers("bad")
    async def bad(payload: Any, ctx: JobContext) -> Any:
        raise PermanentError("the menu photo is not an image")

    async with running(world, handlers, finished):
        made = await world.ok("jobs_enqueue", world.agent, kind="bad", payload=1)
        assert await finished.until(made["id"], "dead") == ["dead"]
    job = await world.ok("jobs_get", world.agent, job_id=made["id"])
    assert job["last_error"] == "the menu photo is not an image"


async def test_a_cancel_reaches_a_running_handler_through_its_heartbeat(world: World) -> None:
    handlers, finished = Handlers(), Finished()
    started = anyio.Event()

    @handlers("slow")
    async def slow(payload: Any, ctx: JobContext) -> Any:
        started.set()
        await ctx.cancelled.wait()
        return "stopped early"

    async with running(world, handlers, finished, lease_seconds=1):
        made = await world.ok("jobs_enqueue", world.agent, kind="slow", payload=1)
        with anyio.fail_after(20):
            await started.wait()
        await world.ok("jobs_cancel", world.agent, job_id=made["id"])
        assert await finished.until(made["id"], "cancelled") == ["cancelled"]


async def test_a_stop_lets_running_handlers_finish_within_the_grace_period(world: World) -> None:
    handlers, finished = Handlers(), Finished()
    started, release = anyio.Event(), anyio.Event()

    @handlers("steady")
    async def steady(payload: Any, ctx: JobContext) -> Any:
        started.set()
        await release.wait()
        return "done"

    async with running(world, handlers, finished) as stop:
        made = await world.ok("jobs_enqueue", world.agent, kind="steady", payload=1)
        with anyio.fail_after(20):
            await started.wait()
        stop.set()
        release.set()
        assert await finished.until(made["id"], "succeeded") == ["succeeded"]


async def test_a_handler_past_the_grace_period_is_stopped_and_its_job_released_to_run_again(world: World) -> None:
    handlers, finished = Handlers(), Finished()
    started = anyio.Event()

    @handlers("stuck")
    async def stuck(payload: Any, ctx: JobContext) -> Any:
        started.set()
        await anyio.Event().wait()

    async with running(world, handlers, finished, grace_seconds=0.1) as stop:
        made = await world.ok("jobs_enqueue", world.agent, kind="stuck", payload=1)
        with anyio.fail_after(20):
            await started.wait()
        stop.set()
        assert await finished.until(made["id"], "failed") == ["failed"]
    job = await world.ok("jobs_get", world.agent, job_id=made["id"])
    assert "worker stopped" in job["last_error"] and job["state"] == "failed"


async def test_an_idle_worker_probes_without_calls_and_adds_no_audit_events(
    world: World, probe: StoreProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes, enough = 0, anyio.Event()
    original = Worker._due

    async def counted(self: Worker, up_to: int) -> int:
        nonlocal probes
        probes += 1
        if probes == 200:
            enough.set()
        return await original(self, up_to)

    monkeypatch.setattr(Worker, "_due", counted)
    before = {e["id"] for e in await probe.audit_events()}
    async with running(world, Handlers({"k": _never}), Finished(), poll_min=0.0005, poll_max=0.001):
        with anyio.fail_after(30):
            await enough.wait()
    events = [e for e in await probe.audit_events() if e["id"] not in before]
    assert [e["operation"] for e in events] == ["whoami"]  # the worker's start; no claims, no polls


async def _never(payload: Any, ctx: JobContext) -> Any:
    raise AssertionError("nothing was enqueued")
