"""Jobs and worker toolsets: durable background work an agent enqueues and a worker process runs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, JsonValue, StringConstraints

from scalemule.core import job_states, jobs
from scalemule.core.jobs import Job
from scalemule.core.pages import paginate
from scalemule.operations.base import (
    Call,
    IdempotencyKey,
    Identifier,
    Result,
    Sensitive,
    TenantArgs,
    TenantPageArgs,
)
from scalemule.operations.registry import REGISTRY, Resource, operation

# Kinds and queues are checked by core.jobs, whose refusal names the allowed form.
Kind = Annotated[str, StringConstraints(max_length=200)]
Queue = Annotated[str, StringConstraints(max_length=100)]
LeaseToken = Annotated[str, StringConstraints(min_length=1, max_length=64), Sensitive()]
StateName = Literal["queued", "running", "succeeded", "failed", "dead", "cancelled"]


class Enqueuer(Result):
    principal_id: str | None
    key_id: str | None


class JobView(Result):
    """A job as shown to callers."""

    id: str
    kind: str
    queue: str
    state: str
    priority: int
    attempt: int
    max_attempts: int
    progress: float | None
    progress_message: str | None
    payload: JsonValue
    result: JsonValue
    last_error: str | None
    cancel_requested: bool
    timeout_seconds: int | None
    enqueued_by: Enqueuer
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_run_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobView:
        """View of ``job``."""
        return cls(
            id=job.id,
            kind=job.kind,
            queue=job.queue,
            state=job.state,
            priority=job.priority,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            progress=job.progress,
            progress_message=job.progress_message,
            payload=job.payload,
            result=job.result,
            last_error=job.last_error,
            cancel_requested=job.cancel_requested,
            timeout_seconds=job.timeout_seconds,
            enqueued_by=Enqueuer(principal_id=job.created_by, key_id=job.created_key),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            next_run_at=_next_run(job),
        )


def _next_run(job: Job) -> datetime | None:
    return job.run_at if job.state in ("queued", "failed") else None


class JobStatus(Result):
    """What a change to a job left: its state and when it runs next (the rest: jobs_get)."""

    id: str
    kind: str
    state: str
    attempt: int
    max_attempts: int
    cancel_requested: bool
    next_run_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobStatus:
        """Status of ``job``."""
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            next_run_at=_next_run(job),
        )


class JobIdArgs(TenantArgs):
    job_id: Identifier = Field(description="Job id.")


def check_server_job(call: Call, job: Job, *, doing: str) -> None:
    """A server task (``jobs.SERVER_QUEUE``) holds its operation's arguments and result: reading or
    cancelling it also takes that operation's permission (a worker holding jobs:read does not see an
    audit_verify report).

    Raises:
        PermissionDenied: the caller lacks the operation's permission.
    """
    op = REGISTRY.get(job.kind) if job.queue == jobs.SERVER_QUEUE else None
    if op is not None:
        call.require(op.permission, doing=f"{doing} (job {job.id} is a task running {op.name})")


# --- the jobs toolset: what an agent building an app uses ------------------------------------


class EnqueueArgs(TenantArgs):
    kind: Kind = Field(description="the handler to run, e.g. 'describe_dishes'")
    payload: JsonValue = Field(description="any JSON, ≤256 KiB; put big data in storage and pass its key")
    queue: Queue = Field(default="default", description="Queue name.")
    priority: int = Field(default=0, ge=-1000, le=1000, description="higher runs first")
    run_at: AwareDatetime | None = Field(default=None, description="ISO 8601; past = now")
    delay_seconds: float | None = Field(default=None, ge=0, le=31_536_000, description="Run after this delay.")
    max_attempts: int = Field(default=5, ge=1, le=100, description="Attempts before dead.")
    timeout_seconds: int | None = Field(default=None, ge=1, le=86_400, description="per attempt")
    idempotency_key: IdempotencyKey | None = None


@operation("jobs_enqueue", title="Enqueue a job", permission="jobs:write", toolset="jobs", target="kind")
async def jobs_enqueue(call: Call, args: EnqueueArgs) -> JobStatus:
    """Queue durable background work (minutes-long calls, batches) for a worker; returns the job at once.

    Follow it with jobs_get. Retries with backoff up to max_attempts. Same idempotency_key and arguments
    return the first job.
    """
    new = jobs.NewJob(
        tenant_id=call.tenant_id,
        kind=args.kind,
        payload=args.payload,
        queue=args.queue,
        priority=args.priority,
        run_at=args.run_at,
        delay=None if args.delay_seconds is None else timedelta(seconds=args.delay_seconds),
        max_attempts=args.max_attempts,
        timeout_seconds=args.timeout_seconds,
        created_by=call.principal.id,
        created_key=call.key.id if call.key is not None else None,
    )
    return JobStatus.of(await jobs.enqueue(call.conn, new, now=call.runtime.clock()))


@operation(
    "jobs_get",
    title="Get a job",
    permission="jobs:read",
    toolset="jobs",
    read_only=True,
    idempotent=True,
    target="job_id",
    resources=(
        Resource(
            "scalemule://tenants/{tenant}/jobs/{job_id}",
            "A job: state, attempts, progress, result and last error",
            name="job",
        ),
    ),
)
async def jobs_get(call: Call, args: JobIdArgs) -> JobView:
    """Show a job: state, attempt, progress and message, result, last error, who enqueued it, times.

    Poll it until state is succeeded, dead or cancelled. Many jobs: jobs_list.
    """
    job = await jobs.get(call.conn, call.tenant_id, args.job_id)
    check_server_job(call, job, doing="read it")
    return JobView.of(job)


class JobSummary(Result):
    id: str
    kind: str
    queue: str
    state: str
    attempt: int
    max_attempts: int
    progress: float | None
    last_error: str | None
    created_at: datetime
    next_run_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobSummary:
        """Summary of ``job``."""
        return cls(
            id=job.id,
            kind=job.kind,
            queue=job.queue,
            state=job.state,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            progress=job.progress,
            last_error=None if job.last_error is None else job.last_error[:200],
            created_at=job.created_at,
            next_run_at=_next_run(job),
            finished_at=job.finished_at,
        )


class JobsListArgs(TenantPageArgs):
    state: StateName | None = Field(default=None, description="Only jobs in this state.")
    kind: Kind | None = Field(default=None, description="Only this kind.")
    queue: Queue | None = Field(default=None, description="Only this queue.")


class JobsPage(Result):
    items: list[JobSummary]
    next_cursor: str | None


@operation("jobs_list", title="List jobs", permission="jobs:read", toolset="jobs", read_only=True, idempotent=True)
async def jobs_list(call: Call, args: JobsListArgs) -> JobsPage:
    """List the tenant's jobs, newest first, by state, kind or queue (no payloads: jobs_get has them)."""
    page, next_cursor = await paginate(
        args.cursor,
        args.limit,
        lambda after, n: jobs.list_jobs(
            call.conn,
            call.tenant_id,
            state=args.state,
            kind=args.kind,
            queue=args.queue,
            after=after if isinstance(after, str) else None,
            limit=n,
        ),
        lambda job: job.position,
    )
    return JobsPage(items=[JobSummary.of(j) for j in page], next_cursor=next_cursor)


@operation(
    "jobs_cancel", title="Cancel a job", permission="jobs:write", toolset="jobs", destructive=True, target="job_id"
)
async def jobs_cancel(call: Call, args: JobIdArgs) -> JobStatus:
    """Cancel a job: a queued or failed one at once; a running one is asked to stop (cancel_requested)
    and its worker sees it on its next heartbeat. Finished jobs: failed_precondition."""
    check_server_job(call, await jobs.get(call.conn, call.tenant_id, args.job_id), doing="cancel it")
    return JobStatus.of(await jobs.cancel(call.conn, call.tenant_id, args.job_id, now=call.runtime.clock()))


@operation("jobs_retry", title="Retry a job", permission="jobs:write", toolset="jobs", target="job_id")
async def jobs_retry(call: Call, args: JobIdArgs) -> JobStatus:
    """Queue a failed, dead or cancelled job again now, with its attempts reset. New work: jobs_enqueue."""
    return JobStatus.of(await jobs.retry(call.conn, call.tenant_id, args.job_id, now=call.runtime.clock()))


# --- the worker toolset: what a worker process uses with its own key --------------------------


class ClaimArgs(TenantArgs):
    queues: list[Queue] | None = Field(default=None, max_length=20, description="default: all")
    kinds: list[Kind] | None = Field(default=None, max_length=100, description="the kinds you handle")
    limit: int = Field(default=1, ge=1, le=100)
    lease_seconds: int = Field(default=60, ge=1, le=3600, description="Lease length; heartbeat to extend.")


class ClaimedJob(Result):
    id: str
    kind: str
    queue: str
    payload: JsonValue
    attempt: int
    max_attempts: int
    timeout_seconds: int | None
    last_error: str | None
    lease_token: str
    lease_expires_at: datetime

    @classmethod
    def of(cls, job: Job) -> ClaimedJob:
        """A claimed job as its worker needs it."""
        assert job.lease_token is not None and job.lease_expires_at is not None
        return cls(
            id=job.id,
            kind=job.kind,
            queue=job.queue,
            payload=job.payload,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            timeout_seconds=job.timeout_seconds,
            last_error=job.last_error,
            lease_token=job.lease_token,
            lease_expires_at=job.lease_expires_at,
        )


class Claimed(Result):
    jobs: list[ClaimedJob]


@operation("jobs_claim", title="Claim jobs to work on", permission="jobs:work", toolset="worker")
async def jobs_claim(call: Call, args: ClaimArgs) -> Claimed:
    """Take up to limit due jobs under a lease; returns at once ([] when none is due, then poll again).

    Keep each lease alive with jobs_heartbeat; finish with jobs_complete or jobs_fail, passing lease_token.
    """
    for name in args.queues or ():
        job_states.check_queue(name)
    claimed = await jobs.claim(
        call.conn,
        call.tenant_id,
        worker=call.principal,
        queues=args.queues,
        kinds=args.kinds,
        limit=args.limit,
        lease=timedelta(seconds=args.lease_seconds),
        now=call.runtime.clock(),
    )
    if claimed:
        call.audit.details = {"claimed": [{"job_id": j.id, "attempt": j.attempt} for j in claimed]}
    else:
        call.audit.tally = True
    return Claimed(jobs=[ClaimedJob.of(j) for j in claimed])


class LeasedArgs(TenantArgs):
    job_id: Identifier = Field(description="Claimed job id.")
    lease_token: LeaseToken = Field(description="From jobs_claim.")


class HeartbeatArgs(LeasedArgs):
    progress: float | None = Field(default=None, ge=0, le=1, description="Fraction done.")
    message: str | None = Field(default=None, max_length=500, description="Progress note.")
    extend_seconds: int | None = Field(default=None, ge=1, le=3600, description="default 60")


class HeartbeatResult(Result):
    state: str
    cancel_requested: bool
    lease_expires_at: datetime


@operation("jobs_heartbeat", title="Extend a job's lease", permission="jobs:work", toolset="worker", target="job_id")
async def jobs_heartbeat(call: Call, args: HeartbeatArgs) -> HeartbeatResult:
    """Extend a claimed job's lease and report progress (0..1, message). Send well within the lease.

    If cancel_requested comes back true, stop and call jobs_fail. A stale lease_token is a conflict.
    """
    job = await jobs.heartbeat(
        call.conn,
        call.tenant_id,
        args.job_id,
        args.lease_token,
        progress=args.progress,
        message=args.message,
        extend=None if args.extend_seconds is None else timedelta(seconds=args.extend_seconds),
        now=call.runtime.clock(),
    )
    if args.progress is None and args.message is None:
        call.audit.tally = True  # a bare lease extension changes nothing anyone reads
    assert job.lease_expires_at is not None
    return HeartbeatResult(
        state=job.state, cancel_requested=job.cancel_requested, lease_expires_at=job.lease_expires_at
    )


class CompleteArgs(LeasedArgs):
    result: JsonValue = Field(default=None, description="any JSON, ≤256 KiB")


@operation("jobs_complete", title="Complete a job", permission="jobs:work", toolset="worker", target="job_id")
async def jobs_complete(call: Call, args: CompleteArgs) -> JobStatus:
    """Finish a claimed job with its result. A stale lease_token (lease expired, job rescued) is a conflict."""
    now = call.runtime.clock()
    job = await jobs.complete(call.conn, call.tenant_id, args.job_id, args.lease_token, args.result, now=now)
    return JobStatus.of(job)


class FailArgs(LeasedArgs):
    # Newlines are welcome (a traceback's last lines); the stored text keeps the first 2,000 characters.
    error: Annotated[str, StringConstraints(min_length=1, max_length=20_000)] = Field(description="what went wrong")
    retryable: bool = Field(default=True, description="false: dead now, no more attempts")


@operation("jobs_fail", title="Fail a job attempt", permission="jobs:work", toolset="worker", target="job_id")
async def jobs_fail(call: Call, args: FailArgs) -> JobStatus:
    """Fail a claimed job's attempt: it runs again after a backoff, or is dead when out of attempts or
    not retryable (cancelled if cancellation was requested). A stale lease_token is a conflict."""
    now = call.runtime.clock()
    job = await jobs.fail(
        call.conn, call.tenant_id, args.job_id, args.lease_token, args.error, retryable=args.retryable, now=now
    )
    return JobStatus.of(job)
