"""Long-running work as MCP Tasks (``io.modelcontextprotocol/tasks``), backed by the job store.

Two kinds of task, one handle: a task id is a job id.

- ``jobs_run`` enqueues a job like ``jobs_enqueue``, for the tenant's workers; the MCP surface then
  hands a task-aware client a task handle, and waits a while for any other client.
- An operation declared ``task=True`` (``audit_verify``) is, for a task-aware client, queued by
  dispatch as a server job (``start``) that a server process runs with the caller's rights; its
  task's result is the operation's own result.

``tasks_get`` and ``tasks_cancel`` are not tools: the surface serves them as the ``tasks/get`` and
``tasks/cancel`` methods, through dispatch like every call. A task is the job read back, so any
replica on the same database answers for it and nothing is kept in a server's memory.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field, JsonValue

from scalemule.core import job_states, jobs
from scalemule.core.errors import FailedPrecondition
from scalemule.core.jobs import Job
from scalemule.operations.base import Call, Identifier, Result, TenantArgs
from scalemule.operations.jobs import EnqueueArgs, check_server_job, jobs_enqueue
from scalemule.operations.registry import Operation, operation

TaskStatus = Literal["working", "input_required", "completed", "failed", "cancelled"]
# Polls of a task come no faster than this, and no slower than the cap (the spec's pollIntervalMs).
MIN_POLL = timedelta(seconds=1)
MAX_POLL = timedelta(seconds=30)
# Runs of a server task before it is given up: a run ends early only when its server stops.
SERVER_ATTEMPTS = 3


class RunArgs(EnqueueArgs):
    wait_seconds: float = Field(
        default=20, ge=0, le=60, description="how long to wait for the result (clients without MCP Tasks)"
    )


class JobOutcome(Result):
    """Where a job run stands: its result once done, else the call to follow it."""

    job_id: str
    kind: str
    state: str
    done: bool
    attempt: int
    max_attempts: int
    progress: float | None
    progress_message: str | None
    result: JsonValue
    last_error: str | None
    follow: str | None

    @classmethod
    def of(cls, job: Job) -> JobOutcome:
        """The outcome of ``job`` as it stands."""
        done = job.state in job_states.FINAL
        return cls(
            job_id=job.id,
            kind=job.kind,
            state=job.state,
            done=done,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            progress=job.progress,
            progress_message=job.progress_message,
            result=job.result,
            last_error=job.last_error,
            follow=None if done else f"jobs_get(job_id='{job.id}')",
        )


@operation("jobs_run", title="Run background work", permission="jobs:write", toolset="jobs", target="kind")
async def jobs_run(call: Call, args: RunArgs) -> JobOutcome:
    """Run background work and get its outcome: enqueues a job (as jobs_enqueue) and waits up to
    wait_seconds for it. MCP Tasks clients get a task handle at once. Still running: follow with jobs_get.
    """
    enqueue = EnqueueArgs.model_validate(args.model_dump(exclude={"wait_seconds"}))
    status = await jobs_enqueue(call, enqueue)
    return JobOutcome.of(await jobs.get(call.conn, call.tenant_id, status.id))


class TaskArgs(TenantArgs):
    task_id: Identifier = Field(description="The taskId a task-augmented jobs_run returned (its job id).")


class TaskView(Result):
    """A job as an MCP Task; the surface writes it in the protocol's camelCase."""

    task_id: str
    status: TaskStatus
    status_message: str
    created_at: datetime
    last_updated_at: datetime
    ttl_ms: int
    poll_interval_ms: int
    # Where the job run stands (the tool's result once completed), and whether that is an error (dead).
    outcome: JobOutcome
    is_error: bool
    # The operation a server task runs (its result is that operation's); None for a jobs_run task.
    operation: str | None = None

    @classmethod
    def of(cls, job: Job, *, ttl: timedelta, now: datetime) -> TaskView:
        """The task ``job`` stands for."""
        status: TaskStatus = {"succeeded": "completed", "dead": "completed", "cancelled": "cancelled"}.get(
            job.state, "working"
        )  # type: ignore[assignment]
        touched = [t for t in (job.created_at, job.started_at, job.finished_at) if t is not None]
        return cls(
            task_id=job.id,
            status=status,
            status_message=status_message(job),
            created_at=job.created_at,
            last_updated_at=max(touched),
            ttl_ms=int(ttl.total_seconds() * 1000),
            poll_interval_ms=int(pace(job, now).total_seconds() * 1000),
            outcome=JobOutcome.of(job),
            is_error=job.state == "dead",
            operation=job.kind if job.queue == jobs.SERVER_QUEUE else None,
        )


def status_message(job: Job) -> str:
    """What a client reads about the job: state, attempt, progress, and what comes next."""
    attempt = f"attempt {job.attempt} of {job.max_attempts}"
    if job.state == "running":
        done = "" if job.progress is None else f" {job.progress:.0%}"
        said = f": {job.progress_message}" if job.progress_message else ""
        stopping = ", cancellation requested" if job.cancel_requested else ""
        return f"running{done}{said} ({attempt}{stopping})"
    if job.state == "failed":
        return f"failed, runs again at {job.run_at.isoformat()} ({attempt}): {(job.last_error or '')[:300]}"
    if job.state == "dead" and job.queue == jobs.SERVER_QUEUE:
        # The operation's own error ends a server task at once: it was never a job that died of retries.
        return f"ended with an error ({attempt}): {(job.last_error or '')[:300]}"
    if job.state == "dead":
        return f"dead after {attempt}: {(job.last_error or '')[:300]}"
    return f"{job.state} ({attempt})"


def pace(job: Job, now: datetime) -> timedelta:
    """How often to poll ``job``: a twentieth of its per-attempt timeout (2 s without one), not before
    it is due to run, within [1 s, 30 s]."""
    step = timedelta(seconds=job.timeout_seconds / 20) if job.timeout_seconds else timedelta(seconds=2)
    if job.state in ("queued", "failed") and job.run_at > now:
        step = max(step, job.run_at - now)
    return min(max(step, MIN_POLL), MAX_POLL)


@operation(
    "tasks_get",
    title="Read a task",
    permission="jobs:read",
    toolset="jobs",
    read_only=True,
    idempotent=True,
    target="task_id",
    tool=False,
)
async def tasks_get(call: Call, args: TaskArgs) -> TaskView:
    """Read a task for ``tasks/get``; another tenant's id is not_found."""
    job = await jobs.get(call.conn, call.tenant_id, args.task_id)
    check_server_job(call, job, doing="read it")
    # A poll changes nothing; the job's own events record every change of state.
    call.audit.tally = True
    ttl = timedelta(seconds=call.runtime.settings.task_ttl_seconds)
    return TaskView.of(job, ttl=ttl, now=call.runtime.clock())


class CancelAck(Result):
    task_id: str
    state: str


@operation(
    "tasks_cancel",
    title="Cancel a task",
    permission="jobs:write",
    toolset="jobs",
    destructive=True,
    target="task_id",
    tool=False,
)
async def tasks_cancel(call: Call, args: TaskArgs) -> CancelAck:
    """Ask a task's job to stop, as jobs_cancel does, for ``tasks/cancel``; a finished one is left as it
    is (the protocol's cancellation is cooperative and always acknowledged)."""
    job = await jobs.get(call.conn, call.tenant_id, args.task_id)
    check_server_job(call, job, doing="cancel it")
    if job.state not in job_states.FINAL:
        job = await jobs.cancel(call.conn, call.tenant_id, args.task_id, now=call.runtime.clock())
    return CancelAck(task_id=job.id, state=job.state)


async def start(call: Call, op: Operation, args: BaseModel, *, client: dict[str, str | None]) -> TaskView:
    """Queue ``op`` with its validated ``args`` as a task a server process runs for the caller (dispatch
    calls this, for a task-aware client, once the call is authorized); the new task.

    The job keeps what the run needs to act as the caller did: the key (re-authenticated and
    re-authorized when the task runs), the tenant, resolved now and named in the arguments, and the
    client, for the run's audit event.

    Raises:
        FailedPrecondition: the call was not made with an API key (the operator's CLI).
    """
    if call.key is None or call.tenant is None:
        raise FailedPrecondition(
            f"{op.name} runs as a task only for a caller with an API key", hint="Call it without tasks."
        )
    arguments = {**args.model_dump(mode="json"), "tenant": call.tenant.slug}
    new = jobs.NewJob(
        tenant_id=call.tenant.id,
        kind=op.name,
        payload={"arguments": arguments, "client": client},
        max_attempts=SERVER_ATTEMPTS,
        created_by=call.principal.id,
        created_key=call.key.id,
    )
    job = await jobs.enqueue_server(call.conn, new, now=call.runtime.clock())
    call.audit.details = {"task_id": job.id}
    ttl = timedelta(seconds=call.runtime.settings.task_ttl_seconds)
    return TaskView.of(job, ttl=ttl, now=call.runtime.clock())
