"""The Python worker: claims jobs through the worker tools and runs their handlers.

It acts with its own key and calls operations in-process through ``Dispatcher`` (transport
``worker``), so every claim, heartbeat and finish is authenticated, authorized and audited exactly as
over MCP. Heartbeats are automatic; a raised exception fails the attempt (``PermanentError``: no
retry); on stop it claims nothing more, lets running handlers finish within a grace period, then
cancels them and fails their attempts (retryable), which releases their leases.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy.exc import SQLAlchemyError

from scalemule import __version__
from scalemule.core import jobs
from scalemule.dispatch import Dispatcher, Exposure, Invocation, Outcome
from scalemule.runtime import Runtime
from scalemule.worker.handlers import Handlers, JobContext, PermanentError, ToolError
from scalemule.worker.maintenance import rescue_forever
from scalemule.worker.wakeup import Listener, Signal

log = logging.getLogger("scalemule.worker")


class Unavailable(Exception):
    """The store did not answer (a restarting database): back off and try again."""


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker claims and runs jobs.

    Attributes:
        queues: the queues to claim from (None: all).
        concurrency: handlers run at once.
        lease_seconds: each claim's lease; heartbeats renew it every third of it.
        grace_seconds: how long running handlers may finish after a stop.
        poll_min: the shortest wait between probes when idle; it doubles up to ``poll_max``.
        poll_max: the longest wait between probes when idle.
    """

    queues: tuple[str, ...] | None = None
    concurrency: int = 1
    lease_seconds: int = 60
    grace_seconds: float = 30.0
    poll_min: float = 0.05
    poll_max: float = 2.0


@dataclass
class _Attempt:
    job: dict[str, Any]
    ctx: JobContext
    scope: anyio.CancelScope
    stopping: bool = False


class Worker:
    """One worker process's loop over a store, with its own key."""

    def __init__(
        self,
        runtime: Runtime,
        api_key: str,
        handlers: Handlers,
        options: WorkerOptions,
        *,
        on_finished: Callable[[str, str], None] | None = None,
    ) -> None:
        """Args:
        runtime: the open stores.
        api_key: the worker's own key (a principal holding ``jobs:work``).
        handlers: handlers by kind; only these kinds are claimed.
        options: queues, concurrency, lease, grace and polling.
        on_finished: called with (job id, resulting state) after each attempt is recorded.
        """
        self.on_finished = on_finished
        self.runtime = runtime
        self.api_key = api_key
        self.handlers = handlers
        self.options = options
        self.dispatcher = Dispatcher(runtime, Exposure(toolsets=None))
        self.tenant_id = ""
        self._wake = Signal()
        # PostgreSQL: announces enqueued jobs and settles which worker answers each (started by run).
        self._listener: Listener | None = None
        self._running: dict[str, _Attempt] = {}
        self._idle = anyio.Event()
        self.done = 0

    # --- calls ------------------------------------------------------------------------------

    async def _invoke(self, tool: str, arguments: dict[str, Any]) -> Outcome:
        invocation = Invocation(
            tool, arguments, self.api_key, "worker", client_name="scalemule-worker", client_version=__version__
        )
        try:
            return await self.dispatcher.call(invocation)
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable(type(exc).__name__) from exc

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Run ``tool`` as the worker.

        Raises:
            ToolError: the tool answered with an error.
            Unavailable: the store did not answer.
        """
        outcome = await self._invoke(tool, arguments)
        if outcome.error is not None:
            if outcome.error.code == "internal":
                raise Unavailable(outcome.error.message)
            raise ToolError(outcome.error.code, outcome.error.message, outcome.error.hint)
        assert outcome.result is not None
        return outcome.result

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stop: anyio.Event) -> None:
        """Claim and run jobs until ``stop`` is set, then drain within the grace period.

        Raises:
            ToolError: the key cannot act as a worker (no tenant, or no ``jobs:work``).
        """
        me = await self.call("whoami", {})
        if me.get("tenant") is None or "jobs:work" not in me["permissions"]:
            raise ToolError("permission_denied", "this key cannot claim jobs", "Use a key holding jobs:work.")
        self.tenant_id = me["tenant"]["id"]
        log.info(
            "worker %s in tenant %s: kinds %s, queues %s, concurrency %d",
            me["principal"]["name"],
            me["tenant"]["slug"],
            ",".join(self.handlers.kinds()),
            ",".join(self.options.queues or ("all",)),
            self.options.concurrency,
        )
        async with anyio.create_task_group() as background:
            background.start_soon(rescue_forever, self.runtime)
            if self.runtime.db.dialect == "postgresql":
                self._listener = Listener(self.runtime.settings.url, self.tenant_id, self._takes, self._wake.set)
                background.start_soon(self._listener.run)
            background.start_soon(self._wake_on, stop)
            async with anyio.create_task_group() as attempts:
                await self._claim_loop(stop, attempts)
                await self._drain()
            background.cancel_scope.cancel()

    def _takes(self, queue: str, kind: str) -> bool:
        return kind in self.handlers.kinds() and (not self.options.queues or queue in self.options.queues)

    async def _wake_on(self, stop: anyio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _claim_loop(self, stop: anyio.Event, attempts: anyio.abc.TaskGroup) -> None:
        delay, busy = self.options.poll_min, False
        while not stop.is_set():
            free = self.options.concurrency - len(self._running)
            if free <= 0:
                await self._wake.wait(self.options.poll_max)
                continue
            try:
                claimed, busy = await self._next_batch(free, busy)
            except Unavailable as exc:
                log.warning("store unavailable (%s); retrying in %.1fs", exc, delay)
                await self._wake.wait(delay)
                delay = min(max(delay, 0.5) * 2, 10.0)
                continue
            if not claimed:
                # A listening worker hears of every job due now; its probe finds the rest (jobs
                # scheduled for later, retries after their backoff) at the slowest pace.
                listening = self._listener is not None and self._listener.listening
                await self._wake.wait(self.options.poll_max if listening else delay)
                delay = min(delay * 2, self.options.poll_max)
                continue
            delay = self.options.poll_min
            for job in claimed:
                self._start(job, attempts)

    async def _next_batch(self, free: int, busy: bool) -> tuple[list[dict[str, Any]], bool]:
        """Claim up to ``free`` jobs when a claim is worth its call; returns them and whether more were
        waiting beyond them (then the next batch is claimed without a probe).

        A worker claims when its last batch was full and more were waiting then; when it answers a job
        announced to it (of the workers an announcement wakes, one does: ``Listener``); or when its
        probe, a read and not a call, finds a job due.
        """
        listener = self._listener
        if busy:
            if listener is not None:
                listener.pending.clear()  # this claim takes what is due anyway
            claimed = await self._claim(free)
            return claimed, len(claimed) == free
        if listener is not None and listener.pending:
            try:
                claimed = await self._claim(free) if await listener.answer(free) else []
            finally:
                await listener.release()
            return claimed, False
        waiting = await self._due(free + 1)
        claimed = await self._claim(free) if waiting else []
        return claimed, waiting > free and len(claimed) == free

    async def _due(self, up_to: int) -> int:
        try:
            # A read beside the write path: it never waits for the write lock, and it is not a call.
            async with self.runtime.db.reader() as conn:
                return await jobs.due(
                    conn,
                    self.tenant_id,
                    queues=self.options.queues,
                    kinds=self.handlers.kinds(),
                    now=self.runtime.clock(),
                    up_to=up_to,
                )
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable(type(exc).__name__) from exc

    async def _claim(self, limit: int) -> list[dict[str, Any]]:
        args: dict[str, Any] = {"kinds": self.handlers.kinds(), "limit": limit}
        args["lease_seconds"] = self.options.lease_seconds
        if self.options.queues:
            args["queues"] = list(self.options.queues)
        try:
            return list((await self.call("jobs_claim", args))["jobs"])
        except ToolError as exc:
            log.error("jobs_claim refused: %s", exc)
            raise Unavailable(exc.code) from exc

    def _start(self, job: dict[str, Any], attempts: anyio.abc.TaskGroup) -> None:
        async def progress(fraction: float, message: str | None) -> None:
            await self._heartbeat(attempt, progress=fraction, message=message)

        async def call(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
            return await self.call(tool, arguments)

        ctx = JobContext(
            job_id=job["id"],
            kind=job["kind"],
            attempt=job["attempt"],
            max_attempts=job["max_attempts"],
            tenant_id=self.tenant_id,
            settings=self.runtime.settings,
            _call=call,
            _progress=progress,
        )
        attempt = _Attempt(job=job, ctx=ctx, scope=anyio.CancelScope())
        self._running[job["id"]] = attempt
        attempts.start_soon(self._attempt, attempt)

    # --- one attempt ------------------------------------------------------------------------

    async def _attempt(self, attempt: _Attempt) -> None:
        job, started = attempt.job, time.perf_counter()
        try:
            async with anyio.create_task_group() as beats:
                beats.start_soon(self._heartbeats, attempt)
                finish = await self._run_handler(attempt)
                beats.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                state = await self._finish(attempt, *finish)
            elapsed = time.perf_counter() - started
            log.info("job %s (%s) attempt %d: %s in %.2fs", job["id"], job["kind"], job["attempt"], state, elapsed)
            if self.on_finished is not None:
                self.on_finished(job["id"], state)
        finally:
            del self._running[job["id"]]
            self.done += 1
            if not self._running:
                self._idle.set()
            self._wake.set()

    async def _run_handler(self, attempt: _Attempt) -> tuple[str, Any, bool]:
        """Run the handler; returns ("complete", result, _) or ("fail", error, retryable)."""
        job, ctx = attempt.job, attempt.ctx
        handler = self.handlers.get(job["kind"])
        if handler is None:
            return "fail", f"this worker has no handler for kind {job['kind']!r}", True
        timeout = job.get("timeout_seconds")
        try:
            with attempt.scope:
                with anyio.move_on_after(timeout):
                    return "complete", await handler(job["payload"], ctx), False
                return "fail", f"timed out after {timeout}s (the job's timeout_seconds)", True
        except PermanentError as exc:
            return "fail", str(exc) or type(exc).__name__, False
        except Exception as exc:  # a handler's failure is the job's, never the worker's
            lines = traceback.format_exception_only(type(exc), exc)
            return "fail", "".join(lines).strip()[:2000], True
        # Reached only when the scope was cancelled: a stop after the grace period, or a lost lease.
        reason = "the worker stopped before the handler finished" if attempt.stopping else "the lease was lost"
        return "fail", reason, True

    async def _heartbeats(self, attempt: _Attempt) -> None:
        every = max(self.options.lease_seconds / 3, 0.2)
        while True:
            await anyio.sleep(every)
            try:
                await self._heartbeat(attempt)
            except Unavailable as exc:
                log.warning("job %s: heartbeat failed (%s); retrying", attempt.job["id"], exc)

    async def _heartbeat(self, attempt: _Attempt, *, progress: float | None = None, message: str | None = None) -> None:
        args: dict[str, Any] = {"job_id": attempt.job["id"], "lease_token": attempt.job["lease_token"]}
        args["extend_seconds"] = self.options.lease_seconds
        if progress is not None:
            args["progress"] = progress
        if message is not None:
            args["message"] = message[:500]
        try:
            beat = await self.call("jobs_heartbeat", args)
        except ToolError as exc:
            # Stale lease: the job was rescued or finished elsewhere. This attempt's work is void.
            log.warning("job %s: %s; abandoning this attempt", attempt.job["id"], exc)
            attempt.ctx.cancelled.set()
            attempt.scope.cancel()
            return
        if beat["cancel_requested"] and not attempt.ctx.cancelled.is_set():
            log.info("job %s: cancellation requested", attempt.job["id"])
            attempt.ctx.cancelled.set()

    async def _finish(self, attempt: _Attempt, action: str, value: Any, retryable: bool) -> str:
        """Complete or fail the attempt, retrying while the store is unavailable; returns the job's state."""
        lease = {"job_id": attempt.job["id"], "lease_token": attempt.job["lease_token"]}
        if action == "complete" and attempt.ctx.cancelled.is_set():
            action, value, retryable = "fail", "cancelled at the request of a jobs_cancel call", False
        if action == "complete":
            tool, args = "jobs_complete", {**lease, "result": value}
        else:
            tool, args = "jobs_fail", {**lease, "error": str(value) or "failed", "retryable": retryable}
        delay = 0.2
        while True:
            try:
                return str((await self.call(tool, args))["state"])
            except ToolError as exc:
                if exc.code == "invalid_argument" and tool == "jobs_complete":
                    tool, args = "jobs_fail", {**lease, "error": f"the handler's result was refused: {exc}"}
                    continue
                log.warning("job %s: %s refused: %s", attempt.job["id"], tool, exc)
                return "abandoned"
            except Unavailable as exc:
                log.warning("job %s: %s failed (%s); retrying in %.1fs", attempt.job["id"], tool, exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _drain(self) -> None:
        if self._running:
            log.info(
                "stopping: waiting up to %.0fs for %d running job(s)", self.options.grace_seconds, len(self._running)
            )
            self._idle = anyio.Event()
            with anyio.move_on_after(self.options.grace_seconds):
                await self._idle.wait()
        for attempt in list(self._running.values()):
            attempt.stopping = True
            attempt.scope.cancel()
