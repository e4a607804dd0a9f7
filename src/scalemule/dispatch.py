"""The one path every call takes, whatever surface it comes from.

authenticate -> expose -> authorize (resolving the tenant) -> validate -> run the handler, all inside
one audited unit of work (core.unit_of_work): its event is appended in the same transaction and
committed with it; a failed or denied call is rolled back and recorded in a fresh transaction. Only
here do errors become results.

An operation declared ``task=True`` takes one of two more turns at the end of the same path: for a
client that accepts a task, it is queued as a server job instead of run (``operations.tasks.start``);
when the server runs that job, the call comes back here with the caller's ``RecordedKey``. Read-only
operations run apart from writers, their event recorded just after (``UnitOfWork.read``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import ValidationError

from scalemule.core import access, audit, identity, tenants
from scalemule.core.access import AUTHENTICATED, KIND_PERMISSIONS, KeyInfo, Principal, Tenant, effective_permissions
from scalemule.core.audit import AuditEvent
from scalemule.core.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ScaleMuleError,
)
from scalemule.core.ids import utcnow
from scalemule.core.unit_of_work import UnitOfWork
from scalemule.db.engine import Connection
from scalemule.db.errors import constraint_errors
from scalemule.db.tables import idempotency_keys
from scalemule.operations import REGISTRY, Operation
from scalemule.operations.base import SHOWN_ONCE, AuditNote, Call, bounded, encodable, recorded_args, redacted
from scalemule.operations.tasks import start as start_task
from scalemule.runtime import Runtime

Via = Literal["tool", "resource", "prompt", "task"]


@dataclass(frozen=True)
class RecordedKey:
    """The credential of a server task's run: the id of the API key that created the task.

    It authenticates as that key does now (a revoked or expired key is ``unauthenticated``), and only
    for operations declared ``task=True``. Only the server's task runner makes one, from the job it
    claimed; surfaces pass the tokens their clients send.
    """

    key_id: str


@dataclass(frozen=True)
class Invocation:
    """A call as a surface hands it over: what to run, with which credential, from where."""

    operation: str
    arguments: Any
    credential: str | RecordedKey | None
    transport: str
    client_name: str | None = None
    client_version: str | None = None
    session_id: str | None = None
    request_id: str | None = None
    # Set for MCP resource reads: the URI read, recorded as the audit target.
    resource: str | None = None
    # How the call reached us: as a tool, or as an MCP resource read, prompt or task method, which are
    # served by operations that are not tools (Operation.tool=False) as well.
    via: Via = "tool"
    # The toolsets a client chose for itself (over HTTP), in place of the server's; never lifts --read-only.
    exposure: Exposure | None = None
    # Where a network client connects from (core.unit_of_work.network_source): refused calls are
    # tallied per source.
    source: str | None = None
    # The client takes an MCP task: an operation declared task=True is queued, not run (Outcome.task).
    accepts_task: bool = False
    # Where a server task's run reports progress (Call.report): (fraction, message).
    progress: Callable[[float, str | None], None] | None = None


@dataclass(frozen=True)
class ErrorBody:
    """The error contract: stable code, message, next step."""

    code: str
    message: str
    hint: str | None

    @classmethod
    def of(cls, error: ScaleMuleError) -> ErrorBody:
        """The contract's form of ``error``."""
        return cls(error.code, error.message, error.hint)

    @property
    def text(self) -> str:
        """``code: message. hint`` — the first line a client reads."""
        return f"{self.code}: {_sentence(self.message)}" + (f" {self.hint}" if self.hint else "")


@dataclass(frozen=True)
class Outcome:
    """What a call produced: a result or an error, plus its audit event id."""

    result: dict[str, Any] | None
    error: ErrorBody | None
    # None when the call was tallied rather than recorded alone (a refused credential).
    event_id: str | None
    # The call was queued as a server task: ``result`` is the new task (operations.tasks.TaskView).
    task: bool = False


# The default tool list: what an agent building an app calls in a session, within the 24,000-character
# budget of tools/list. Every other tool is one toolset away (--toolsets, the X-MCP-Toolsets header or
# /mcp/x/{toolsets}); docs/decisions.md says why each tool is in or out.
DEFAULT_TOOLS = frozenset(
    {
        "whoami",
        "access_check",
        "agents_create",
        "keys_create",
        "envs_list",
        "config_set",
        "config_get",
        "config_list",
        "config_delete",
        "secrets_set",
        "secrets_list",
        "storage_put_object",
        "storage_get_object",
        "storage_list_objects",
        "storage_delete_object",
        "storage_create_signed_url",
        "jobs_enqueue",
        "jobs_get",
        "jobs_list",
        "jobs_cancel",
        "jobs_run",
    }
)
DEFAULT = "default"
# An audited target is indexed (audit_query's target filter), and PostgreSQL refuses an index entry
# over a third of a page (2,704 bytes): 1,000 characters of another script can pass that, so a
# target is also cut to 2,000 bytes of UTF-8.
TARGET_BYTES = 2000


def toolsets() -> list[str]:
    """Every toolset that serves a tool, sorted; ``default`` names the default tool list."""
    return sorted({op.toolset for op in REGISTRY.values() if op.tool})


@dataclass(frozen=True)
class Exposure:
    """Which operations a server exposes: toolsets (``default``: the default tool list; None: every tool)
    and read-only mode. Operations that are not tools (resources, prompts) are served whatever the toolsets."""

    toolsets: frozenset[str] | None = None
    read_only: bool = False

    @classmethod
    def parse(cls, value: str, *, read_only: bool = False) -> Exposure:
        """``all``, or a comma list of toolsets and ``default``.

        Raises:
            InvalidArgument: an unknown toolset name (with the nearest known one).
        """
        if value.strip() == "all":
            return cls(None, read_only)
        names = frozenset(v.strip() for v in value.split(",") if v.strip())
        known = [*toolsets(), DEFAULT]
        if unknown := sorted(names - set(known)):
            raise InvalidArgument(
                f"unknown toolsets: {', '.join(unknown)}",
                hint=f"{access.did_you_mean(unknown[0], [*known, 'all'])}Known: {', '.join(known)}, all.",
            )
        if not names:
            raise InvalidArgument("no toolset named", hint=f"Name one or more of: {', '.join(known)}, all.")
        return cls(names, read_only)

    def allows(self, op: Operation) -> bool:
        """True when ``op`` is served under this exposure."""
        chosen = self.toolsets
        in_toolset = (
            chosen is None or not op.tool or op.toolset in chosen or (DEFAULT in chosen and op.name in DEFAULT_TOOLS)
        )
        return in_toolset and (op.read_only or not self.read_only)


@dataclass
class _Caller:
    """What is known of a call so far: the trace its unit of work records (core.unit_of_work.Trace)."""

    inv: Invocation
    op: Operation | None
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    key: KeyInfo | None = None
    tenant: Tenant | None = None
    role: str | None = None
    note: AuditNote = field(default_factory=AuditNote)
    task_started: bool = False

    @property
    def operation(self) -> str:
        """The operation named by the call."""
        return self.inv.operation

    @property
    def source(self) -> str:
        """The client's network source, else the transport (stdio and the CLI have one client each)."""
        return self.inv.source or self.inv.transport

    @property
    def tallied(self) -> bool:
        """Whether the handler asked, through its AuditNote, for a successful call to be tallied (it
        changed nothing: an idle poll)."""
        return self.note.tally

    def event(self, outcome: audit.Outcome, error_code: str | None) -> AuditEvent:
        """The call's audit event."""
        inv, op, principal, key = self.inv, self.op, self.principal, self.key
        tenant_id = self.note.tenant_id or (self.tenant.id if self.tenant is not None else None)
        tenant_id = tenant_id or _home_tenant(principal, key)
        args = recorded_args(op.args_model if op is not None else None, inv.arguments)
        if outcome == "ok" and self.note.details:
            args = {**args, **self.note.details}  # what the arguments do not show (the jobs a claim took)
        target = inv.resource
        if target is None and op is not None and op.target and isinstance(inv.arguments, Mapping):
            value = inv.arguments.get(op.target)
            target = None if value is None else value if isinstance(value, str) else str(bounded(value))
        return AuditEvent(
            at=utcnow(),
            operation=_clip(inv.operation, 64) or "",
            outcome=outcome,
            transport=inv.transport,
            duration_ms=(time.perf_counter() - self.started) * 1000,
            args=args,
            tenant_id=tenant_id,
            actor_id=principal.id if principal else None,
            actor_kind=principal.kind if principal else None,
            actor_name=principal.name if principal else None,
            key_id=key.id if key else None,
            on_behalf_of=principal.on_behalf_of if principal else None,
            client_name=_clip(inv.client_name, 200),
            client_version=_clip(inv.client_version, 100),
            session_id=_clip(inv.session_id, 100),
            request_id=_clip(inv.request_id, 100),
            permission=op.permission if op is not None else None,
            target=_clip(target, 1000, max_bytes=TARGET_BYTES),
            error_code=error_code,
        )


class Dispatcher:
    """Runs operations for one server or CLI process."""

    def __init__(self, runtime: Runtime, exposure: Exposure | None = None) -> None:
        self.runtime = runtime
        self.exposure = exposure or Exposure()
        # Called once a server task is committed: the process's task runner sets it to take the task now.
        self.task_created: Callable[[], None] = lambda: None

    def exposure_for(self, chosen: Exposure | None) -> Exposure:
        """The exposure a call is served under: the client's choice of toolsets, else the server's, and
        read-only whenever the server is."""
        if chosen is None:
            return self.exposure
        return Exposure(chosen.toolsets, chosen.read_only or self.exposure.read_only)

    def exposed(self, chosen: Exposure | None = None) -> list[Operation]:
        """The operations served under the client's choice of toolsets (default: the server's), in registry order."""
        exposure = self.exposure_for(chosen)
        return [op for op in REGISTRY.values() if exposure.allows(op)]

    async def call(self, inv: Invocation) -> Outcome:
        """Run one invocation through the whole path; never raises for a caller's mistake."""
        caller = _Caller(inv, REGISTRY.get(inv.operation))
        work = UnitOfWork(self.runtime.db, caller)
        # A read never holds up writers: it runs apart and its event is recorded after it. A read that
        # a task-aware client may turn into a task queues a job, which is a write.
        op = caller.op
        reads = op is not None and op.read_only and not (op.task and inv.accepts_task)
        unit = work.read if reads else work.run
        try:
            result = await unit(lambda conn: self._pipeline(conn, caller))
        except ScaleMuleError as error:
            return Outcome(result=None, error=ErrorBody.of(error), event_id=work.event_id)
        if caller.task_started:
            self.task_created()
        return Outcome(result=result, error=None, event_id=work.event_id, task=caller.task_started)

    async def screen(self, inv: Invocation, refusal: ScaleMuleError | None = None) -> ErrorBody | None:
        """Check a request's credential before a surface reads it; None lets it on.

        A refused credential comes back as ``unauthenticated`` (tallied, like any other); with a valid
        one, ``refusal`` (a request the surface will not take) comes back, recorded as the caller's.
        Nothing is recorded for a request let on: dispatch records the call it carries.
        """
        caller = _Caller(inv, REGISTRY.get(inv.operation))
        work = UnitOfWork(self.runtime.db, caller)
        try:
            async with work.recorded():
                # A read, apart from writers (no write lock on SQLite); the key's last_used_at, deferred
                # here, is refreshed by the call the request carries.
                async with self.runtime.db.snapshot([]) as conn:
                    who = await _authenticate(conn, inv.credential)
                caller.principal, caller.key = who.principal, who.key
                if refusal is not None:
                    raise refusal
        except ScaleMuleError as error:
            return ErrorBody.of(error)
        return None

    async def _pipeline(self, conn: Connection, caller: _Caller) -> dict[str, Any]:
        """authenticate -> expose -> authorize -> run; the unit of work records the outcome."""
        inv = caller.inv
        who = await _authenticate(conn, inv.credential)
        caller.principal, caller.key = who.principal, who.key
        op = self._exposed(inv)
        call = await self._authorize(conn, op, inv, who, caller)
        if inv.accepts_task and op.task and call.allows("jobs:read"):
            # Queued, not run: a caller that could not read its task back (no jobs:read) is answered
            # at once instead.
            args = self._validated(op, inv.arguments)
            client = {"name": inv.client_name, "version": inv.client_version}
            task = await start_task(call, op, args, client=client)
            caller.task_started = True
            return task.model_dump(mode="json")
        return await self._run(call, op, inv.arguments)

    def _exposed(self, inv: Invocation) -> Operation:
        name = inv.operation
        op = REGISTRY.get(name)
        if inv.resource is not None and op is None:
            raise NotFound(
                f"no resource at {inv.resource[:200]!r}",
                hint="See resources/templates/list for the URIs served.",
            )
        # Operations that are not tools are served as MCP resources and prompts, and to the operator's CLI.
        if op is None or (not op.tool and inv.resource is None and inv.via == "tool" and inv.transport != "cli"):
            tools = [o.name for o in REGISTRY.values() if o.tool]
            raise NotFound(
                f"no tool named {name[:64]!r}",
                hint=f"{access.did_you_mean(name, tools)}List tools with tools/list or 'scalemule tools'.",
            )
        if isinstance(inv.credential, RecordedKey) and not op.task:
            raise FailedPrecondition(f"{name} does not run as a task", hint="Only task operations run from a task.")
        exposure = self.exposure_for(inv.exposure)
        # Toolsets choose tools; resources are served whatever the toolsets (all are read-only).
        if not (exposure.allows(op) or (inv.resource is not None and op.read_only)):
            if exposure.read_only and not op.read_only:
                raise PermissionDenied(
                    f"{name} changes state and this server runs --read-only",
                    hint="Use a read-only tool, or ask the operator.",
                )
            enable = (
                f"Enable it: start the server with --toolsets default,{op.toolset}, or over HTTP "
                f"send 'X-MCP-Toolsets: default,{op.toolset}' (or use /mcp/x/default,{op.toolset})."
            )
            if op.resources:
                # What the operation also serves as a resource is readable whatever the toolsets: say so.
                enable = f"Or read the resource {op.resources[0].template} (resources/read). {enable}"
            raise PermissionDenied(f"{name} belongs to toolset '{op.toolset}', which is not enabled here", hint=enable)
        return op

    async def _authorize(
        self, conn: Connection, op: Operation, inv: Invocation, who: identity.Authenticated, caller: _Caller
    ) -> Call:
        requested = inv.arguments.get("tenant") if isinstance(inv.arguments, Mapping) else None
        tenant_needed = op.tenant_scoped and op.permission != AUTHENTICATED
        if op.tenant_scoped:
            found = await _resolve_tenant(conn, who, requested, required=tenant_needed)
            if found is not None:
                caller.tenant, caller.role = found
        bound = who.key.tenant_id is not None
        permissions = effective_permissions(who.principal, caller.role, who.key.scopes, bound=bound)
        call = Call(
            conn=conn,
            runtime=self.runtime,
            principal=who.principal,
            key=who.key,
            tenant=caller.tenant,
            role=caller.role,
            permissions=permissions,
            audit=caller.note,
            progress=inv.progress,
        )
        if (
            op.permission != AUTHENTICATED
            and access.missing(permissions, op.permission)
            and not await _by_grant(call, op)
        ):
            raise _denied(op, caller)
        return call

    @staticmethod
    def _validated(op: Operation, raw: Any) -> Any:
        try:
            return op.args_model.model_validate({} if raw is None else raw)
        except ValidationError as exc:
            raise _invalid(op, exc) from None

    async def _run(self, call: Call, op: Operation, raw: Any) -> dict[str, Any]:
        args = self._validated(op, raw)
        key = getattr(args, "idempotency_key", None)
        if key is None:
            return (await op.handler(call, args)).model_dump(mode="json")
        scope = call.tenant.id if call.tenant is not None else call.principal.id
        fingerprint = _fingerprint(op, args.model_dump(mode="json", exclude={"idempotency_key"}))
        query = sa.select(idempotency_keys).where(idempotency_keys.c.scope == scope, idempotency_keys.c.key == key)
        previous = (await call.conn.execute(query)).first()
        if previous is not None:
            if previous.operation != op.name or previous.request_sha256 != fingerprint:
                raise Conflict(
                    f"idempotency_key {key!r} was already used with other arguments",
                    hint="Use a fresh idempotency_key for a different request.",
                )
            # Said on every replay, so no client mistakes it for a fresh result; a one-time value
            # (a token) was stored as a marker and is never shown again.
            return {**previous.result, "replayed": True}
        replay = (await op.handler(call, args)).model_dump(mode="json")
        async with constraint_errors(
            {
                "pk_idempotency_keys": lambda: Conflict(
                    f"a concurrent call with idempotency_key {key!r} is in flight",
                    hint="Retry to get its result.",
                )
            }
        ):
            await call.conn.execute(
                idempotency_keys.insert().values(
                    scope=scope,
                    key=key,
                    operation=op.name,
                    request_sha256=fingerprint,
                    result=redacted(op.result_model, replay, SHOWN_ONCE),
                    created_at=utcnow(),
                )
            )
        return replay


async def _authenticate(conn: Connection, credential: str | RecordedKey | None) -> identity.Authenticated:
    if isinstance(credential, RecordedKey):
        return await identity.authenticate_key(conn, credential.key_id)
    return await identity.authenticate(conn, credential)


async def _by_grant(call: Call, op: Operation) -> bool:
    # A permission a grant can give on named targets lets the call on when some grant gives it
    # somewhere; the handler decides for its target (Call.require_on). Only then are grants read.
    return op.permission in access.GRANTABLE and access.may_reach(call.permissions, await call.grants(), op.permission)


async def _resolve_tenant(
    conn: Connection, who: identity.Authenticated, requested: Any, *, required: bool
) -> tuple[Tenant, str] | None:
    """The tenant a call acts in and the caller's role there (DESIGN section 2, step 2)."""
    principal, key = who.principal, who.key
    if requested is not None:
        if not isinstance(requested, str):
            raise InvalidArgument("tenant must be a tenant slug string", hint="Use tenants_list to see your tenants.")
        valid = tenants.SLUG.match(requested) is not None
        found = await tenants.membership_by_slug(conn, principal_id=principal.id, slug=requested) if valid else None
        if found is None or (key.tenant_id is not None and found[0].id != key.tenant_id):
            # The same answer whether or not the tenant exists: no existence leak.
            raise PermissionDenied(
                f"{principal.kind} '{principal.name}' has no access to tenant {_clip(requested, 64)!r}",
                hint="Use tenants_list to see the tenants you can act in.",
            )
        return found
    if key.tenant_id is not None:
        found = who.bound
        if found is None:
            raise PermissionDenied(
                f"{principal.kind} '{principal.name}' is no longer a member of the tenant its key is bound to",
                hint="Ask an owner to add it back with members_add.",
            )
        return found
    mine = await tenants.memberships_of(conn, principal_id=principal.id, limit=2)
    if len(mine) == 1:
        return mine[0]
    if not required:
        return None
    if not mine:
        raise FailedPrecondition(
            f"{principal.kind} '{principal.name}' belongs to no tenant",
            hint="Create one with tenants_create.",
        )
    raise InvalidArgument("you belong to several tenants: say which", hint="Pass tenant=<slug>; see tenants_list.")


def _denied(op: Operation, caller: _Caller) -> PermissionDenied:
    principal, key = caller.principal, caller.key
    assert principal is not None
    where = f" in tenant '{caller.tenant.slug}'" if caller.tenant is not None else ""
    bound = key is not None and key.tenant_id is not None
    hint = "Use access_check or whoami to see what you may do, or ask an owner or admin."  # pragma: no mutate
    if bound and op.permission in KIND_PERMISSIONS[principal.kind]:
        reason = "its key is bound to a tenant, and this acts outside it"
        hint = "Use your personal key (one not bound to a tenant)."  # pragma: no mutate
    # No bound= here: all a bound key lacks beside its scopes are kind permissions, answered above.
    elif (
        key is not None
        and key.scopes is not None
        and op.permission in effective_permissions(principal, caller.role, None)
    ):
        reason = f"its key {key.prefix}… is not scoped for it"
    elif not op.tenant_scoped:
        reason = f"{principal.kind}s do not hold it"
    else:
        reason = f"role {caller.role!r}"
    return PermissionDenied(
        f"{principal.kind} '{principal.name}' lacks '{op.permission}'{where} ({reason}) for {op.name}", hint=hint
    )


def _invalid(op: Operation, exc: ValidationError) -> InvalidArgument:
    problems = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        problems.append(f"{where}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    fields = ", ".join(op.args_model.model_fields)
    return InvalidArgument(
        f"invalid arguments for {op.name}: " + "; ".join(problems) + more,
        hint=f"Accepted arguments: {fields or 'none'}. See the tool's input schema.",
    )


def _fingerprint(op: Operation, args: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for piece in canonical_json([op.name, args]):
        digest.update(piece.encode())
    return digest.hexdigest()


# Strings are escaped this many characters at a time when hashed.
_SLICE = 1 << 20


def canonical_json(value: Any) -> Iterator[str]:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"))`` in pieces, a long string a slice at
    a time: an argument of 16 MiB is hashed without being copied whole, twice (text, then bytes)."""
    if isinstance(value, str):
        yield '"'
        for start in range(0, len(value), _SLICE):
            yield json.dumps(value[start : start + _SLICE])[1:-1]
        yield '"'
    elif isinstance(value, dict):
        yield "{"
        for index, key in enumerate(sorted(value)):
            yield f"{',' if index else ''}{json.dumps(key)}:"
            yield from canonical_json(value[key])
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for index, item in enumerate(value):
            if index:
                yield ","
            yield from canonical_json(item)
        yield "]"
    else:
        yield json.dumps(value)


def _home_tenant(principal: Principal | None, key: KeyInfo | None) -> str | None:
    # A call that never reached a tenant is still shown to the caller's own tenant (e.g. an agent
    # probing another tenant), else it goes to the global chain.
    if key is not None and key.tenant_id is not None:
        return key.tenant_id
    return principal.tenant_id if principal is not None else None


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def _clip(value: str | None, size: int, *, max_bytes: int | None = None) -> str | None:
    # Audit text columns take what callers sent: cut to size, NUL made visible (PostgreSQL refuses it).
    if value is None:
        return None
    text = encodable(str(value)[:size]).replace("\x00", "\\x00")[:size]
    if max_bytes is not None:
        text = text.encode()[:max_bytes].decode(errors="ignore")  # never half a character
    return text
