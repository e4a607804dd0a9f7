"""Durable background jobs: enqueue, claim under a lease, heartbeat, complete, fail, cancel, retry, rescue.

Every move goes through ``job_states.transition`` and is written with an update that matches the state
(and, for a worker's write, the lease token) it was decided on: a concurrent move makes the later
writer fail with ``conflict`` rather than overwrite. Worker writes are fenced by the lease token, so a
worker whose lease expired and whose job was rescued can never complete it a second time.

Claims take due jobs with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (workers never wait on each other's
rows); on SQLite the unit of work already holds the database's only write lock. Every claim first
rescues a bounded batch of its tenant's expired leases; long-running processes also rescue across
tenants periodically (``rescue_expired``), so no separate daemon is needed. Time is always passed in.

Jobs in ``SERVER_QUEUE`` are operations the server itself runs for a caller (MCP Tasks of tools such
as ``audit_verify``): only ``enqueue_server`` puts them there (the queue's name is not a valid queue
name, so no caller can enqueue into it), only ``claim_server`` takes them, and ``claim`` never does.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scalemule.core import audit
from scalemule.core.access import Principal
from scalemule.core.audit import AuditEvent
from scalemule.core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from scalemule.core.ids import new_id, utcnow
from scalemule.core.job_states import (
    CLAIMABLE,
    Action,
    after_failure,
    backoff,
    check_json_size,
    check_kind,
    check_queue,
    transition,
)
from scalemule.db.engine import Connection
from scalemule.db.tables import jobs
from scalemule.db.tables.jobs import CLAIMABLE_ROWS

MAX_ERROR_CHARS = 2000
DEFAULT_LEASE = timedelta(seconds=60)
RESCUE_BATCH = 100
# PostgreSQL channel notified in the enqueue's transaction (delivered on commit) of a job due now; the
# payload is "<tenant id> <job id> <queue> <kind>" (none of them holds a space).
NOTIFY_CHANNEL = "scalemule_jobs"
# The queue of operations the server runs itself. A leading underscore is outside QUEUE_PATTERN, so
# check_queue refuses it to every caller: jobs_enqueue cannot put work here, jobs_claim cannot ask for it.
SERVER_QUEUE = "_server"


@dataclass(frozen=True)
class Job:
    """One job as stored."""

    id: str
    tenant_id: str
    queue: str
    kind: str
    payload: Any
    state: str
    priority: int
    attempt: int
    max_attempts: int
    timeout_seconds: int | None
    run_at: datetime
    lease_token: str | None
    lease_expires_at: datetime | None
    worker_id: str | None
    cancel_requested: bool
    progress: float | None
    progress_message: str | None
    result: Any
    last_error: str | None
    created_by: str | None
    created_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> Job:
        """The job of a ``jobs`` row."""
        mapping = row._mapping
        return cls(**{name: mapping[name] for name in _FIELDS})

    @property
    def position(self) -> str:
        """Its place in a newest-first listing, kept in a page cursor."""
        return f"{self.created_at.isoformat()}|{self.id}"


_FIELDS = tuple(f.name for f in fields(Job))


@dataclass(frozen=True)
class NewJob:
    """What ``enqueue`` needs; ``run_at`` and ``delay`` are exclusive (neither: now)."""

    tenant_id: str
    kind: str
    payload: Any
    queue: str = "default"
    priority: int = 0
    run_at: datetime | None = None
    delay: timedelta | None = None
    max_attempts: int = 5
    timeout_seconds: int | None = None
    created_by: str | None = None
    created_key: str | None = None


def _pg(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


# --- the agent's side ------------------------------------------------------------------------


async def enqueue(conn: Connection, new: NewJob, *, now: datetime) -> Job:
    """Add a job; it runs at ``run_at`` (a past time means now), after ``delay``, or now.

    Raises:
        InvalidArgument: a bad kind or queue name, both ``run_at`` and ``delay``, a negative delay, or a
            payload over 256 KiB. Nothing is written then.
    """
    check_kind(new.kind)
    check_queue(new.queue)
    check_json_size(new.payload, "payload")
    if new.run_at is not None and new.delay is not None:
        raise InvalidArgument("pass run_at or delay_seconds, not both", hint="Keep the one you mean.")
    if new.delay is not None and new.delay < timedelta(0):
        raise InvalidArgument("delay_seconds must not be negative", hint="Use 0 (or omit it) to run now.")
    due = now + new.delay if new.delay is not None else max(now, new.run_at or now)
    # Announced on PostgreSQL when due now; a job due later is found by the workers' probes.
    return await _insert(conn, new, due=due, now=now, announce=_pg(conn) and due <= now)


async def enqueue_server(conn: Connection, new: NewJob, *, now: datetime) -> Job:
    """Add a job the server runs itself (``SERVER_QUEUE``, whatever ``new.queue`` says), due now.

    Raises:
        InvalidArgument: a bad kind, or a payload over 256 KiB.
    """
    check_kind(new.kind)
    check_json_size(new.payload, "payload")
    # No NOTIFY: it wakes a tenant's own workers, which never take these.
    return await _insert(conn, replace(new, queue=SERVER_QUEUE), due=now, now=now, announce=False)


async def _insert(conn: Connection, new: NewJob, *, due: datetime, now: datetime, announce: bool) -> Job:
    row = {
        "id": new_id("job"),
        "tenant_id": new.tenant_id,
        "queue": new.queue,
        "kind": new.kind,
        "payload": new.payload,
        "state": "queued",
        "priority": new.priority,
        "attempt": 0,
        "max_attempts": new.max_attempts,
        "timeout_seconds": new.timeout_seconds,
        "run_at": due,
        "lease_token": None,
        "lease_expires_at": None,
        "worker_id": None,
        "cancel_requested": False,
        "progress": None,
        "progress_message": None,
        "result": None,
        "last_error": None,
        "created_by": new.created_by,
        "created_key": new.created_key,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
    }
    if announce:
        # Sent inside the transaction: PostgreSQL delivers it on commit, never for a rolled-back job.
        params = {f"j_{name}": value for name, value in row.items()}
        params |= {"channel": NOTIFY_CHANNEL, "payload": f"{new.tenant_id} {row['id']} {new.queue} {new.kind}"}
        await conn.execute(_INSERT_ANNOUNCED, params)
    else:
        await conn.execute(_INSERT, row)
    return Job(**row)


# Hot-path statements are built once: constructing a statement costs more than running it on SQLite.
_INSERT = jobs.insert()
# PostgreSQL: the job inserted and announced (NOTIFY) in one statement, one round trip.
_inserted = jobs.insert().values({c.name: sa.bindparam(f"j_{c.name}", type_=c.type) for c in jobs.c}).cte("inserted")
_INSERT_ANNOUNCED = sa.select(sa.func.pg_notify(sa.bindparam("channel"), sa.bindparam("payload"))).add_cte(_inserted)
_GET = sa.select(jobs).where(jobs.c.tenant_id == sa.bindparam("t"), jobs.c.id == sa.bindparam("j"))
_GET_LOCKED = _GET.with_for_update()


def _not_found(job_id: str) -> NotFound:
    # The same answer for a job of another tenant: no existence leak.
    return NotFound(
        f"no job {job_id[:64]!r} in this tenant",
        hint="Use jobs_list to see the tenant's jobs.",
    )


async def get(conn: Connection, tenant_id: str, job_id: str, *, lock: bool = False) -> Job:
    """The tenant's job ``job_id``.

    Raises:
        NotFound: no such job in this tenant (another tenant's job gets the same answer).
    """
    query = _GET_LOCKED if lock and _pg(conn) else _GET
    row = (await conn.execute(query, {"t": tenant_id, "j": job_id})).first()
    if row is None:
        raise _not_found(job_id)
    return Job.of(row)


async def list_jobs(
    conn: Connection,
    tenant_id: str,
    *,
    state: str | None = None,
    kind: str | None = None,
    queue: str | None = None,
    after: str | None = None,
    limit: int,
) -> list[Job]:
    """The tenant's jobs, newest first, filtered, starting after the position ``after``.

    Raises:
        InvalidArgument: ``after`` is not a position this module made.
    """
    query = listing(tenant_id, state=state, kind=kind, queue=queue, after=after, limit=limit)
    return [Job.of(row) for row in await conn.execute(query)]


def listing(
    tenant_id: str, *, state: str | None, kind: str | None, queue: str | None, after: str | None, limit: int
) -> sa.Select[Any]:
    """The statement of ``list_jobs``: read newest first from ``ix_jobs_listing``, or with a filter from
    that filter's own index (``ix_jobs_listing_state`` ...), which holds each value's jobs in that order.

    Raises:
        InvalidArgument: ``after`` is not a position this module made.
    """
    query = sa.select(jobs).where(jobs.c.tenant_id == tenant_id)
    for column, value in ((jobs.c.state, state), (jobs.c.kind, kind), (jobs.c.queue, queue)):
        if value is not None:
            query = query.where(column == value)
    if after is not None:
        at, _, last_id = after.partition("|")
        try:
            created = datetime.fromisoformat(at)
        except ValueError:
            raise InvalidArgument("cursor is not one this server issued", hint="Omit it to start over.") from None
        if created.tzinfo is None:
            raise InvalidArgument("cursor is not one this server issued", hint="Omit it to start over.")
        query = query.where(
            sa.or_(jobs.c.created_at < created, sa.and_(jobs.c.created_at == created, jobs.c.id < last_id))
        )
    return query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)


_UPDATES: dict[tuple[tuple[str, ...], bool], Any] = {}


def _update(columns: tuple[str, ...], fenced: bool) -> Any:
    """``UPDATE jobs SET state, <columns> WHERE id, state [, lease_token]``, built once per shape."""
    found = _UPDATES.get((columns, fenced))
    if found is None:
        where = [jobs.c.id == sa.bindparam("old_id"), jobs.c.state == sa.bindparam("old_state")]
        if fenced:
            where.append(jobs.c.lease_token == sa.bindparam("old_token"))
        setting: dict[str, Any] = {"state": sa.bindparam("new_state"), **{c: sa.bindparam(c) for c in columns}}
        found = _UPDATES[(columns, fenced)] = jobs.update().where(*where).values(setting)
    return found


async def _move(conn: Connection, job: Job, action: Action, values: dict[str, Any]) -> Job:
    """Apply ``action`` to ``job`` as read: the update matches its state and lease, else ``conflict``."""
    new_state = transition(job.state, action)
    params = {**values, "new_state": new_state, "old_id": job.id, "old_state": job.state, "old_token": job.lease_token}
    if (await conn.execute(_update(tuple(sorted(values)), job.lease_token is not None), params)).rowcount != 1:
        raise Conflict(
            f"job {job.id} changed while this call ran", hint="Read it with jobs_get and retry if still needed."
        )
    return replace(job, state=new_state, **values)


async def cancel(conn: Connection, tenant_id: str, job_id: str, *, now: datetime) -> Job:
    """Cancel a queued or failed job at once; for a running one, request it (seen on the next heartbeat).

    Raises:
        NotFound: no such job in this tenant.
        FailedPrecondition: the job already finished (succeeded, dead or cancelled).
    """
    job = await get(conn, tenant_id, job_id, lock=True)
    if job.state == "running":
        return await _move(conn, job, "cancel", {"cancel_requested": True})
    return await _move(conn, job, "cancel", {"finished_at": now, "cancel_requested": False})


async def retry(conn: Connection, tenant_id: str, job_id: str, *, now: datetime) -> Job:
    """Queue a failed, dead or cancelled job again, now, with its attempts reset.

    Raises:
        NotFound: no such job in this tenant.
        FailedPrecondition: the job is queued, running or succeeded, or is a task the server ran (a task
            runs again by calling its tool again).
    """
    job = await get(conn, tenant_id, job_id, lock=True)
    if job.queue == SERVER_QUEUE:
        raise FailedPrecondition(
            f"job {job.id} is a task the server ran ({job.kind}); it is not retried",
            hint=f"Call {job.kind} again for a fresh run.",
        )
    values = {
        "attempt": 0,
        "run_at": now,
        "cancel_requested": False,
        "progress": None,
        "progress_message": None,
        "result": None,
        "finished_at": None,
    }
    return await _move(conn, job, "retry", values)


# --- the worker's side -----------------------------------------------------------------------


async def claim(
    conn: Connection,
    tenant_id: str,
    *,
    worker: Principal,
    queues: Sequence[str] | None,
    kinds: Sequence[str] | None,
    limit: int,
    lease: timedelta,
    now: datetime,
    transport: str = "internal",
) -> list[Job]:
    """Claim up to ``limit`` due jobs, highest priority then oldest first, each under a fresh lease.

    Expired leases of the tenant are rescued first (a bounded batch), so a claim can pick them up.
    Returns at once: an empty list when nothing is due. Never takes a job of ``SERVER_QUEUE``.
    """
    await rescue_expired(conn, now=now, rescuer=worker, tenant_id=tenant_id, transport=transport)
    statement = _claim_next(bool(queues), bool(kinds))
    params: dict[str, Any] = {"t": tenant_id, "now": now, "until": now + lease, "worker": worker.id}
    params |= {"queues": list(queues or ()), "kinds": list(kinds or ()), "new_state": _CLAIMED}
    claimed: list[Job] = []
    # One statement per job, picking and leasing it at once; the first that finds nothing ends the claim.
    while len(claimed) < limit:
        row = (await conn.execute(statement, params | {"token": _lease_token()})).first()
        if row is None:
            break
        claimed.append(Job.of(row))
    return claimed


async def claim_server(conn: Connection, *, worker_id: str, limit: int, lease: timedelta, now: datetime) -> list[Job]:
    """Claim up to ``limit`` due jobs of ``SERVER_QUEUE``, across tenants, oldest first, for the server
    process ``worker_id`` to run. Expired leases are left to the periodic rescue."""
    rows = (await conn.execute(_SERVER_PICK_LOCKED, {"now": now, "n": limit})).all()
    return await _take(conn, rows, worker_id=worker_id, lease=lease, now=now)


async def server_due(conn: Connection, *, now: datetime) -> bool:
    """Whether a job of ``SERVER_QUEUE`` is due (a read: a runner looks before it takes a write lock)."""
    return (await conn.execute(_SERVER_PICK, {"now": now, "n": 1})).first() is not None


async def _take(conn: Connection, rows: Sequence[Any], *, worker_id: str, lease: timedelta, now: datetime) -> list[Job]:
    claimed: list[Job] = []
    for row in rows:
        values = {
            "new_state": transition(row.state, "claim"),
            "old_id": row.id,
            "old_state": row.state,
            "token": _lease_token(),
            "until": now + lease,
            "worker": worker_id,
            "now": now,
        }
        updated = (await conn.execute(_CLAIM, values)).first()
        if updated is not None:
            claimed.append(Job.of(updated))
    return claimed


def _lease_token() -> str:
    # Unguessable: the token is the worker's only proof that it holds the lease.
    return secrets.token_urlsafe(24)


# Both claimable states lead to the same one.
(_CLAIMED,) = {transition(state, "claim") for state in CLAIMABLE}
_CLAIMS: dict[tuple[bool, bool], Any] = {}


def _due_now(by_queue: bool, by_kind: bool) -> Any:
    """The tenant's (``t``) claimable jobs due at ``now``, of ``queues`` and ``kinds`` when filtered; its
    states written out so that a planner sees these are rows of the partial index ``ix_jobs_claim``."""
    condition = sa.and_(
        jobs.c.tenant_id == sa.bindparam("t"),
        CLAIMABLE_ROWS,
        jobs.c.run_at <= sa.bindparam("now"),
        jobs.c.queue != SERVER_QUEUE,
    )
    # A bound parameter given to in_() expands to the list passed at run time.
    if by_queue:
        condition = sa.and_(condition, jobs.c.queue.in_(sa.bindparam("queues")))
    if by_kind:
        condition = sa.and_(condition, jobs.c.kind.in_(sa.bindparam("kinds")))
    return condition


def _claim_next(by_queue: bool, by_kind: bool) -> Any:
    """Lease the tenant's best due job, if any, and return it: ``UPDATE jobs ... WHERE id = (the pick)
    RETURNING *``, built once per filter shape."""
    found = _CLAIMS.get((by_queue, by_kind))
    if found is None:
        # The pick and the write are one statement, so the job is still claimable when it is leased: on
        # SQLite the statement holds the database's only write lock; on PostgreSQL the pick locks the row
        # (re-checking its conditions on the newest version) until the transaction ends.
        best = _pick(by_queue, by_kind).scalar_subquery()
        found = _CLAIMS[(by_queue, by_kind)] = jobs.update().where(jobs.c.id == best).values(_LEASE).returning(*jobs.c)
    return found


def _pick(by_queue: bool, by_kind: bool) -> Any:
    """The tenant's best due job: highest priority, then earliest due, then smallest id, read in that
    order from ``ix_jobs_claim``; locked with ``FOR UPDATE SKIP LOCKED``, so workers claiming at once
    never wait on each other's rows (SQLite renders no FOR UPDATE: there the unit of work already holds
    the database's only write lock)."""
    best = sa.select(jobs.c.id).where(_due_now(by_queue, by_kind))
    best = best.order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
    return best.limit(1).with_for_update(skip_locked=True)


# The queue is written into the statement, not bound: it matches the partial index ix_jobs_server_due
# only when the planner sees the value (a prepared statement's parameter would not do).
_SERVER_PICK = (
    sa.select(jobs.c.id, jobs.c.state)
    .where(
        jobs.c.queue == sa.literal_column(f"'{SERVER_QUEUE}'"),
        jobs.c.state.in_(CLAIMABLE),
        jobs.c.run_at <= sa.bindparam("now"),
    )
    .order_by(jobs.c.run_at, jobs.c.id)
    .limit(sa.bindparam("n"))
)
# SQLite renders no FOR UPDATE: there the unit of work already holds the database's only write lock.
_SERVER_PICK_LOCKED = _SERVER_PICK.with_for_update(skip_locked=True)


_LEASE: dict[str, Any] = {
    "state": sa.bindparam("new_state"),
    "attempt": jobs.c.attempt + 1,
    "lease_token": sa.bindparam("token"),
    "lease_expires_at": sa.bindparam("until"),
    "worker_id": sa.bindparam("worker"),
    "started_at": sa.bindparam("now"),
    "run_at": sa.bindparam("now"),
    "progress": None,
    "progress_message": None,
}
_CLAIM = (
    jobs.update()
    .where(jobs.c.id == sa.bindparam("old_id"), jobs.c.state == sa.bindparam("old_state"))
    .values(_LEASE)
    .returning(*jobs.c)
)


async def _leased(conn: Connection, tenant_id: str, job_id: str, token: str) -> Job:
    """The job if ``token`` is its current lease.

    Raises:
        NotFound: no such job in this tenant.
        Conflict: the token is stale: the lease expired and the job was rescued, or it finished, or another
            worker holds it now.
    """
    job = await get(conn, tenant_id, job_id, lock=True)
    if job.state != "running" or job.lease_token is None or not secrets.compare_digest(job.lease_token, token):
        raise _stale(job)
    return job


def _stale(job: Job) -> Conflict:
    return Conflict(
        f"the lease token for job {job.id} is stale (the job is {job.state}): its lease expired and it was "
        "rescued, it finished, or another worker holds it",
        hint="Drop this attempt's result: do not retry the write. Claim new jobs with jobs_claim.",
    )


_FENCED: dict[tuple[str, ...], Any] = {}


def _fenced(columns: tuple[str, ...]) -> Any:
    """``UPDATE jobs SET state, <columns> WHERE tenant, id, state 'running', lease_token RETURNING *``,
    built once per shape."""
    found = _FENCED.get(columns)
    if found is None:
        setting: dict[str, Any] = {"state": sa.bindparam("new_state"), **{c: sa.bindparam(c) for c in columns}}
        found = _FENCED[columns] = (
            jobs.update()
            .where(
                jobs.c.tenant_id == sa.bindparam("t"),
                jobs.c.id == sa.bindparam("j"),
                jobs.c.state == "running",
                jobs.c.lease_token == sa.bindparam("token"),
            )
            .values(setting)
            .returning(*jobs.c)
        )
    return found


async def _leased_move(
    conn: Connection, tenant_id: str, job_id: str, token: str, action: Action, values: dict[str, Any]
) -> Job:
    """Apply ``action``, whose outcome does not depend on the job's other columns, to the running job
    leased by ``token``: one fenced update that hands back the row (no read before it).

    Raises:
        NotFound: no such job in this tenant.
        Conflict: the lease token is stale.
    """
    params = {**values, "new_state": transition("running", action), "t": tenant_id, "j": job_id, "token": token}
    row = (await conn.execute(_fenced(tuple(sorted(values))), params)).first()
    if row is None:
        # Only now is the job read, to say why: unknown here, or leased no more.
        raise _stale(await get(conn, tenant_id, job_id))
    return Job.of(row)


async def heartbeat(
    conn: Connection,
    tenant_id: str,
    job_id: str,
    token: str,
    *,
    progress: float | None,
    message: str | None,
    extend: timedelta | None,
    now: datetime,
) -> Job:
    """Extend the lease and record progress; the returned job says whether cancellation was requested.

    Raises:
        NotFound: no such job in this tenant.
        Conflict: the lease token is stale.
    """
    values: dict[str, Any] = {"lease_expires_at": now + (extend or DEFAULT_LEASE)}
    if progress is not None:
        values["progress"] = progress
    if message is not None:
        values["progress_message"] = message[:500]
    return await _leased_move(conn, tenant_id, job_id, token, "heartbeat", values)


async def complete(conn: Connection, tenant_id: str, job_id: str, token: str, result: Any, *, now: datetime) -> Job:
    """Record the attempt's result: the job succeeded.

    Raises:
        NotFound: no such job in this tenant.
        Conflict: the lease token is stale (so a job is never completed twice).
        InvalidArgument: the result is over 256 KiB.
    """
    check_json_size(result, "result")
    values = {"result": result, "progress": 1.0, "finished_at": now, "lease_token": None, "lease_expires_at": None}
    return await _leased_move(conn, tenant_id, job_id, token, "complete", values)


async def fail(
    conn: Connection,
    tenant_id: str,
    job_id: str,
    token: str,
    error: str,
    *,
    retryable: bool,
    now: datetime,
    rand: Callable[[], float] | None = None,
    detail: Any = None,
) -> Job:
    """Record a failed attempt: the job runs again after a backoff, or is dead, or cancelled if requested.

    ``detail``, when given, is kept as the job's result: what the attempt produced although it failed
    (a server task keeps its operation's error there, code and hint included).

    Raises:
        NotFound: no such job in this tenant.
        Conflict: the lease token is stale.
        InvalidArgument: ``detail`` is over 256 KiB.
    """
    if detail is not None:
        check_json_size(detail, "result")
    job = await _leased(conn, tenant_id, job_id, token)
    return await _end_attempt(conn, job, error, retryable=retryable, now=now, rand=rand, detail=detail)


async def _end_attempt(
    conn: Connection,
    job: Job,
    error: str,
    *,
    retryable: bool,
    now: datetime,
    rand: Callable[[], float] | None,
    detail: Any = None,
) -> Job:
    action = after_failure(
        attempt=job.attempt, max_attempts=job.max_attempts, retryable=retryable, cancel_requested=job.cancel_requested
    )
    values: dict[str, Any] = {"last_error": error[:MAX_ERROR_CHARS], "lease_token": None, "lease_expires_at": None}
    if detail is not None:
        values["result"] = detail
    if action == "fail":
        values["run_at"] = now + (backoff(job.attempt, rand=rand) if rand else backoff(job.attempt))
    else:
        values["finished_at"] = now
    return await _move(conn, job, action, values)


async def rescue_expired(
    conn: Connection,
    *,
    now: datetime,
    rescuer: Principal,
    tenant_id: str | None = None,
    transport: str = "internal",
    limit: int = RESCUE_BATCH,
) -> list[Job]:
    """Move running jobs whose lease expired before ``now`` back to queued (dead when out of attempts,
    cancelled when that was requested), each with an audit event in its tenant's log.

    Args:
        conn: the unit of work.
        now: the time leases are compared with.
        rescuer: who is rescuing (the claiming worker, or the process's maintenance), the events' actor.
        tenant_id: only this tenant's jobs (None: every tenant's).
        transport: recorded in the events.
        limit: at most this many jobs per call.
    """
    query = _expired(tenant_id is not None)
    rescued: list[Job] = []
    for row in (await conn.execute(query, {"now": now, "t": tenant_id, "n": limit})).all():
        job = Job.of(row)
        expired = job.lease_expires_at.isoformat() if job.lease_expires_at else "?"
        error = f"lease expired at {expired} during attempt {job.attempt}: the worker stopped sending heartbeats"
        action = after_failure(
            attempt=job.attempt, max_attempts=job.max_attempts, retryable=True, cancel_requested=job.cancel_requested
        )
        values: dict[str, Any] = {"last_error": error, "lease_token": None, "lease_expires_at": None}
        if action == "fail":
            action, values["run_at"] = "rescue", now
        else:
            values["finished_at"] = now
        rescued.append(await _move(conn, job, action, values))
    if rescued:
        await audit.append(conn, [_rescue_event(job, rescuer, transport) for job in rescued])
    return rescued


_EXPIRED: dict[bool, Any] = {}


def _expired(by_tenant: bool) -> Any:
    """Running jobs whose lease expired before ``now``, oldest lease first, built once per shape.

    Locked as read, skipping rows another rescuer or claim holds (SQLite renders no FOR UPDATE: there
    the unit of work already holds the database's only write lock)."""
    found = _EXPIRED.get(by_tenant)
    if found is None:
        condition = sa.and_(jobs.c.state == "running", jobs.c.lease_expires_at < sa.bindparam("now"))
        if by_tenant:
            condition = sa.and_(condition, jobs.c.tenant_id == sa.bindparam("t"))
        found = sa.select(jobs).where(condition).order_by(jobs.c.lease_expires_at).limit(sa.bindparam("n"))
        found = _EXPIRED[by_tenant] = found.with_for_update(skip_locked=True)
    return found


_ANY_EXPIRED = (
    sa.select(jobs.c.id).where(jobs.c.state == "running", jobs.c.lease_expires_at < sa.bindparam("now")).limit(1)
)


async def has_expired(conn: Connection, *, now: datetime) -> bool:
    """Whether any running job's lease expired before ``now`` (a read: decides if a rescue pass is needed)."""
    return (await conn.execute(_ANY_EXPIRED, {"now": now})).first() is not None


def _rescue_event(job: Job, rescuer: Principal, transport: str) -> AuditEvent:
    return AuditEvent(
        at=utcnow(),
        operation="jobs_rescue",
        outcome="ok",
        transport=transport,
        duration_ms=0.0,
        args={"job_id": job.id, "attempt": job.attempt, "state": job.state, "reason": "lease expired"},
        tenant_id=job.tenant_id,
        actor_id=rescuer.id,
        actor_kind=rescuer.kind,
        actor_name=rescuer.name,
        on_behalf_of=rescuer.on_behalf_of,
        permission="jobs:work",
        target=job.id,
    )


_COUNTS: dict[tuple[bool, bool], Any] = {}


async def due(
    conn: Connection,
    tenant_id: str,
    *,
    queues: Sequence[str] | None,
    kinds: Sequence[str] | None,
    now: datetime,
    up_to: int,
) -> int:
    """How many of the tenant's claimable jobs of these queues and kinds are due at ``now``, counted up
    to ``up_to`` (a worker's probe: whether to claim, and whether more than one batch waits). Reads only."""
    shape = (bool(queues), bool(kinds))
    statement = _COUNTS.get(shape)
    if statement is None:
        waiting = sa.select(jobs.c.id).where(_due_now(*shape)).limit(sa.bindparam("n")).subquery()
        statement = _COUNTS[shape] = sa.select(sa.func.count()).select_from(waiting)
    params = {"t": tenant_id, "now": now, "n": up_to, "queues": list(queues or ()), "kinds": list(kinds or ())}
    return int((await conn.execute(statement, params)).scalar_one())


def maintenance_principal() -> Principal:
    """The actor of rescues made by a process's periodic maintenance rather than by a claim."""
    return Principal(id="maintenance", kind="operator", name="job-maintenance")
