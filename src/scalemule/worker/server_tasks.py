"""The server's task runner: runs the operations task-aware clients called as MCP Tasks.

Every ``scalemule serve`` process (stdio and HTTP) runs one beside its job maintenance. It claims due
jobs of the server queue (``core.jobs.SERVER_QUEUE``) across tenants and runs each through dispatch as
the caller who created it: a ``RecordedKey`` credential, so the key is authenticated and the call
authorized now, and the run is audited (transport ``task``, request id the task id). It then completes
the job with the operation's result, or fails it with the operation's error (kept in the job's result,
so ``tasks/get`` answers exactly what the tool would have).

While a run lasts, a heartbeat every ``beat`` seconds renews the lease, writes the run's latest
progress and reads whether ``tasks/cancel`` asked it to stop; the run is then cancelled at its next
checkpoint (the audit verifier's next batch). A run whose server dies is rescued when its lease
expires (``worker.maintenance``) and run again by whichever server claims it next; the lease token
fences the first run's late writes. Nothing is kept in memory that another server would need.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
from anyio.abc import TaskGroup
from sqlalchemy.exc import SQLAlchemyError

from scalemule import __version__
from scalemule.core import jobs
from scalemule.core.errors import Conflict, InvalidArgument, NotFound, ScaleMuleError
from scalemule.core.ids import new_id
from scalemule.core.jobs import Job
from scalemule.dispatch import Dispatcher, ErrorBody, Exposure, Invocation, Outcome, RecordedKey
from scalemule.worker.wakeup import Signal

log = logging.getLogger("scalemule.tasks")

# Long enough to ride out a slow store; a dead server's task is run again this long after it died.
LEASE = timedelta(seconds=30)
# How often a running task's progress is written and its cancellation looked for.
BEAT = 1.0
# How often an idle runner looks for due tasks (rescued ones, or ones another busy server left); the
# server that creates a task wakes its own runner at once.
POLL = 1.0
CONCURRENCY = 2
# How long a stopping server spends handing its running tasks back.
RELEASE_SECONDS = 5.0


@dataclass
class _Run:
    job: Job
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    progress: tuple[float | None, str | None] = (None, None)
    # A tasks/cancel asked it to stop / its lease was lost (the job was rescued, or its tenant deleted).
    cancelled: bool = False
    lost: bool = False

    def report(self, fraction: float, message: str | None) -> None:
        self.progress = (fraction, message)


class TaskRunner:
    """Runs one process's share of the server tasks; start ``run`` beside the server."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        lease: timedelta = LEASE,
        beat: float = BEAT,
        poll: float = POLL,
        concurrency: int = CONCURRENCY,
    ) -> None:
        """Args:
        dispatcher: the server's dispatcher: runs go through it, and it wakes the runner when a task
            is created.
        lease: each claim's lease, renewed by every heartbeat.
        beat: seconds between heartbeats of a running task.
        poll: seconds between looks for due tasks when idle.
        concurrency: tasks run at once.
        """
        self.dispatcher = dispatcher
        self.runtime = dispatcher.runtime
        self.lease, self.beat, self.poll, self.concurrency = lease, beat, poll, concurrency
        # Who holds the lease, as the job records it (one id per process).
        self.worker_id = new_id("srv")
        self._wake = Signal()
        self._running: dict[str, _Run] = {}
        self._scope = anyio.CancelScope()
        self._started, self._stopped = False, anyio.Event()

    async def run(self) -> None:
        """Claim and run due server tasks until cancelled or ``stop``; a task created here is taken at once."""
        self.dispatcher.task_created = self._wake.set
        self._started = True
        try:
            with self._scope:
                async with anyio.create_task_group() as runs:
                    while True:
                        await self._claim_into(runs)
                        await self._wake.wait(self.poll)
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Claim nothing more and hand the running tasks back, so another server runs them at once rather
        than when their leases run out; returns once they are handed back (if ``run`` was started)."""
        self._scope.cancel()
        if self._started:
            await self._stopped.wait()

    async def run_due(self) -> int:
        """Claim the tasks due now (up to ``concurrency``) and run them to their end; how many ran."""
        async with anyio.create_task_group() as runs:
            ran = await self._claim_into(runs)
        return ran

    async def _claim_into(self, runs: TaskGroup) -> int:
        free = self.concurrency - len(self._running)
        if free <= 0:
            return 0
        try:
            # Look first with a read: most looks find nothing, and then take no write lock (SQLite).
            async with self.runtime.db.reader() as conn:
                if not await jobs.server_due(conn, now=self.runtime.clock()):
                    return 0
            async with self.runtime.db.transaction() as conn:
                claimed = await jobs.claim_server(
                    conn, worker_id=self.worker_id, limit=free, lease=self.lease, now=self.runtime.clock()
                )
        except (SQLAlchemyError, OSError) as exc:
            log.warning("server tasks: the store did not answer (%s); looking again later", type(exc).__name__)
            return 0
        for job in claimed:
            run = _Run(job)
            self._running[job.id] = run
            runs.start_soon(self._attempt, run)
        return len(claimed)

    async def _attempt(self, run: _Run) -> None:
        started = time.perf_counter()
        try:
            async with anyio.create_task_group() as beats:
                beats.start_soon(self._beats, run)
                outcome = await self._call(run)
                beats.cancel_scope.cancel()
            state = await self._finish(run, outcome)
            log.info(
                "task %s (%s) attempt %d: %s in %.2fs",
                run.job.id,
                run.job.kind,
                run.job.attempt,
                state,
                time.perf_counter() - started,
            )
        except anyio.get_cancelled_exc_class():
            # The server is stopping: hand the task back (it runs again soon, on whichever server
            # claims it) instead of leaving it to its lease.
            with anyio.move_on_after(RELEASE_SECONDS, shield=True):
                await self._settle(run, "fail", error="the server running it stopped", retryable=True)
            raise
        finally:
            self._running.pop(run.job.id, None)
            self._wake.set()

    async def _call(self, run: _Run) -> Outcome | None:
        """Run the task's operation as its creator; None when it was stopped (cancel, lost lease) or the
        store did not answer (its lease then runs out and it is rescued)."""
        job = run.job
        payload: dict[str, Any] = job.payload if isinstance(job.payload, dict) else {}
        client: dict[str, Any] = payload["client"] if isinstance(payload.get("client"), dict) else {}
        invocation = Invocation(
            operation=job.kind,
            arguments=payload.get("arguments"),
            credential=RecordedKey(job.created_key or ""),
            transport="task",
            client_name=client.get("name") or "scalemule-tasks",
            client_version=client.get("version") or __version__,
            request_id=job.id,
            via="task",
            # Exposure was decided when the task was created; any server may run it.
            exposure=Exposure(toolsets=None),
            progress=run.report,
        )
        with run.scope:
            try:
                return await self.dispatcher.call(invocation)
            except (SQLAlchemyError, OSError) as exc:
                log.warning("task %s: the store did not answer (%s); it runs again later", job.id, type(exc).__name__)
        return None

    async def _beats(self, run: _Run) -> None:
        while True:
            await anyio.sleep(self.beat)
            await self._beat(run)

    async def _beat(self, run: _Run) -> None:
        job = run.job
        assert job.lease_token is not None
        fraction, message = run.progress
        try:
            async with self.runtime.db.transaction() as conn:
                seen = await jobs.heartbeat(
                    conn,
                    job.tenant_id,
                    job.id,
                    job.lease_token,
                    progress=fraction,
                    message=message,
                    extend=self.lease,
                    now=self.runtime.clock(),
                )
        except (Conflict, NotFound) as exc:
            log.warning("task %s: %s; abandoning this run", job.id, exc.message)
            run.lost = True
            run.scope.cancel()
            return
        except (SQLAlchemyError, OSError) as exc:
            log.warning("task %s: heartbeat failed (%s); retrying", job.id, type(exc).__name__)
            return
        if seen.cancel_requested and not run.cancelled:
            log.info("task %s: cancellation requested", job.id)
            run.cancelled = True
            run.scope.cancel()

    async def _finish(self, run: _Run, outcome: Outcome | None) -> str:
        """Record how the run ended, retrying while the store does not answer; the job's state."""
        if run.lost:
            return "abandoned (lease lost)"
        if outcome is None:
            if not run.cancelled:
                return "abandoned (store unavailable)"
            return await self._settle(run, "fail", error="cancelled at the request of tasks/cancel", retryable=False)
        if outcome.error is None:
            return await self._settle(run, "complete", result=outcome.result)
        return await self._settle(
            run,
            "fail",
            error=outcome.error.text,
            # An internal error may pass (a store's hiccup); the caller's own mistakes will not.
            retryable=outcome.error.code == "internal",
            detail={"error": _body(outcome.error)},
        )

    async def _settle(
        self,
        run: _Run,
        action: str,
        *,
        result: Any = None,
        error: str = "",
        retryable: bool = False,
        detail: Any = None,
    ) -> str:
        job, delay = run.job, 0.2
        assert job.lease_token is not None
        deadline = time.monotonic() + self.lease.total_seconds()
        while True:
            try:
                async with self.runtime.db.transaction() as conn:
                    now = self.runtime.clock()
                    if action == "complete":
                        done = await jobs.complete(conn, job.tenant_id, job.id, job.lease_token, result, now=now)
                    else:
                        token = job.lease_token
                        done = await jobs.fail(
                            conn, job.tenant_id, job.id, token, error, retryable=retryable, now=now, detail=detail
                        )
                return done.state
            except InvalidArgument as exc:
                if action != "complete":
                    raise
                # The result is over the size a job keeps: the task ends with that error instead.
                action, error, detail = "fail", ErrorBody.of(exc).text, {"error": _body(ErrorBody.of(exc))}
            except ScaleMuleError as exc:
                # Stale lease (rescued, finished elsewhere) or the tenant is gone: nothing to record here.
                log.warning("task %s: %s not recorded: %s", job.id, action, exc.message)
                return "abandoned"
            except (SQLAlchemyError, OSError) as exc:
                if time.monotonic() > deadline:
                    log.warning("task %s: %s not recorded (%s); its lease runs out", job.id, action, type(exc).__name__)
                    return "abandoned (store unavailable)"
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)


def _body(error: ErrorBody) -> dict[str, str | None]:
    return {"code": error.code, "message": error.message, "hint": error.hint}
