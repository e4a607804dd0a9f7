"""The one path every call takes, whatever surface it comes from.

authenticate -> resolve tenant -> authorize -> validate -> run handler in one transaction -> append the
audit event in that same transaction -> commit. A failed or denied call is rolled back and its audit
event written in a fresh transaction. Only here do errors become results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import sqlalchemy as sa
from pydantic import ValidationError

from scalemule.core import audit, audit_rollups, identity, tenants
from scalemule.core.access import AUTHENTICATED, KeyInfo, Principal, Tenant, effective_permissions
from scalemule.core.audit import AuditEvent
from scalemule.core.errors import (
    Conflict,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ScaleMuleError,
    Unauthenticated,
)
from scalemule.core.ids import utcnow
from scalemule.db.engine import Connection
from scalemule.db.errors import constraint_errors
from scalemule.db.tables import idempotency_keys
from scalemule.operations import REGISTRY, Operation
from scalemule.operations.base import AuditNote, Call, bounded, encodable, recorded_args, redacted
from scalemule.runtime import Runtime

log = logging.getLogger("scalemule")


@dataclass(frozen=True)
class Invocation:
    """A call as a surface hands it over: what to run, with which credential, from where."""

    operation: str
    arguments: Any
    credential: str | None
    transport: str
    client_name: str | None = None
    client_version: str | None = None
    session_id: str | None = None
    request_id: str | None = None
    # Set for MCP resource reads: the URI read, recorded as the audit target.
    resource: str | None = None


@dataclass(frozen=True)
class ErrorBody:
    """The error contract: stable code, message, next step."""

    code: str
    message: str
    hint: str | None

    @property
    def text(self) -> str:
        """``code: message. hint`` — the first line a client reads."""
        return f"{self.code}: {_sentence(self.message)}" + (f" {self.hint}" if self.hint else "")


@dataclass(frozen=True)
class Outcome:
    """What a call produced: a result or an error, plus its audit event id."""

    result: dict[str, Any] | None
    error: ErrorBody | None
    event_id: str


@dataclass(frozen=True)
class Exposure:
    """Which operations this server exposes: toolsets (None = all) and read-only mode."""

    toolsets: frozenset[str] | None = None
    read_only: bool = False

    def allows(self, op: Operation) -> bool:
        """True when ``op`` is served under this exposure."""
        in_toolset = self.toolsets is None or op.toolset in self.toolsets or not op.tool
        return in_toolset and (op.read_only or not self.read_only)


# What an agent building an app uses in a session. The audit tools (also readable as the resource
# scalemule://tenants/{tenant}/audit/recent) and the worker tools are enabled with --toolsets; keeping
# them out holds the default tool list within its size budget (docs/decisions.md).
DEFAULT_TOOLSETS = frozenset({"identity", "config", "secrets", "storage", "jobs"})


@dataclass
class _Caller:
    principal: Principal | None = None
    key: KeyInfo | None = None
    tenant: Tenant | None = None
    role: str | None = None
    note: AuditNote = field(default_factory=AuditNote)


class Dispatcher:
    """Runs operations for one server or CLI process."""

    def __init__(self, runtime: Runtime, exposure: Exposure | None = None) -> None:
        self.runtime = runtime
        self.exposure = exposure or Exposure()

    def exposed(self) -> list[Operation]:
        """The operations this dispatcher serves, in registry order."""
        return [op for op in REGISTRY.values() if self.exposure.allows(op)]

    async def call(self, inv: Invocation) -> Outcome:
        """Run one invocation through the whole path; never raises for a caller's mistake."""
        started = time.perf_counter()
        op = REGISTRY.get(inv.operation)
        caller = _Caller()
        try:
            async with self.runtime.db.transaction() as conn:
                who = await identity.authenticate(conn, inv.credential)
                caller.principal, caller.key = who.principal, who.key
                op = self._exposed(inv)
                call = await self._authorize(conn, op, inv, who, caller)
                result = await self._run(call, op, inv.arguments)
                event = await self._record(conn, inv, op, caller, started, "ok", None)
            return Outcome(result=result, error=None, event_id=event.id)
        except anyio.get_cancelled_exc_class():
            # The client cancelled the request: the change is rolled back, and that is recorded.
            with anyio.CancelScope(shield=True):
                async with self.runtime.db.transaction() as conn:
                    await self._record(conn, inv, op, caller, started, "cancelled", None)
            raise
        except ScaleMuleError as exc:
            error = exc
        except Exception:
            log.exception("internal error in %s", inv.operation)
            error = Internal(
                "an unexpected error occurred; nothing was changed",
                hint="Retry; if it persists, report it with the audit event id.",
            )
        outcome: audit.Outcome = "denied" if isinstance(error, PermissionDenied | Unauthenticated) else "error"
        async with self.runtime.db.transaction() as conn:
            event = await self._record(conn, inv, op, caller, started, outcome, error.code)
        hint = error.hint
        if error.code == "internal":
            hint = f"{hint} (audit event {event.id})"
        return Outcome(result=None, error=ErrorBody(error.code, error.message, hint), event_id=event.id)

    def _exposed(self, inv: Invocation) -> Operation:
        name = inv.operation
        op = REGISTRY.get(name)
        if inv.resource is not None and op is None:
            raise NotFound(
                f"no resource at {inv.resource[:200]!r}",
                hint="See resources/templates/list for the URIs served.",
            )
        # Operations that are not tools are served as MCP resources and to the operator's CLI.
        if op is None or (not op.tool and inv.resource is None and inv.transport != "cli"):
            raise NotFound(f"no tool named {name[:64]!r}", hint="List tools with tools/list or 'scalemule tools'.")
        # Toolsets choose tools; resources are served whatever the toolsets (all are read-only).
        if not (self.exposure.allows(op) or (inv.resource is not None and op.read_only)):
            if self.exposure.read_only and not op.read_only:
                raise PermissionDenied(
                    f"{name} changes state and this server runs --read-only",
                    hint="Use a read-only tool, or ask the operator.",
                )
            raise PermissionDenied(
                f"{name} belongs to toolset '{op.toolset}', which this server does not enable",
                hint=f"Start the server with --toolsets including {op.toolset}.",
            )
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
        permissions = effective_permissions(who.principal, caller.role, who.key.scopes)
        if op.permission != AUTHENTICATED and op.permission not in permissions:
            raise _denied(op, caller, permissions)
        return Call(
            conn=conn,
            runtime=self.runtime,
            principal=who.principal,
            key=who.key,
            tenant=caller.tenant,
            role=caller.role,
            permissions=permissions,
            audit=caller.note,
        )

    async def _run(self, call: Call, op: Operation, raw: Any) -> dict[str, Any]:
        try:
            args = op.args_model.model_validate({} if raw is None else raw)
        except ValidationError as exc:
            raise _invalid(op, exc) from None
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
            return dict(previous.result)
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
                    result=redacted(op.result_model, replay),
                    created_at=utcnow(),
                )
            )
        return replay

    async def _record(
        self,
        conn: Connection,
        inv: Invocation,
        op: Operation | None,
        caller: _Caller,
        started: float,
        outcome: audit.Outcome,
        error_code: str | None,
    ) -> AuditEvent:
        principal, key = caller.principal, caller.key
        tenant_id = caller.note.tenant_id or (caller.tenant.id if caller.tenant is not None else None)
        tenant_id = tenant_id or _home_tenant(principal, key)
        args = recorded_args(op.args_model, inv.arguments) if op is not None else {"_raw": bounded(inv.arguments)}
        target = inv.resource
        if target is None and op is not None and op.target and isinstance(inv.arguments, Mapping):
            value = inv.arguments.get(op.target)
            target = None if value is None else value if isinstance(value, str) else str(bounded(value))
        event = AuditEvent(
            at=utcnow(),
            operation=_clip(inv.operation, 64) or "",
            outcome=outcome,
            transport=inv.transport,
            duration_ms=(time.perf_counter() - started) * 1000,
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
            target=_clip(target, 1000),
            error_code=error_code,
        )
        if outcome == "ok":
            event = _noted(event, caller.note)
            if caller.note.tally:
                # The call changed nothing (an idle poll): counted into its minute's aggregate event.
                await audit_rollups.tally(conn, event, source=inv.transport)
                return event
        (sealed,) = await audit.append(conn, [event])
        return sealed


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


def _denied(op: Operation, caller: _Caller, permissions: Iterable[str]) -> PermissionDenied:
    principal = caller.principal
    assert principal is not None
    where = f" in tenant '{caller.tenant.slug}'" if caller.tenant is not None else ""
    by_key = (
        caller.key is not None
        and caller.key.scopes is not None
        and op.permission in effective_permissions(principal, caller.role, None)
    )
    if by_key and caller.key is not None:
        reason = f"its key {caller.key.prefix}… is not scoped for it"
    elif not op.tenant_scoped:
        reason = f"{principal.kind}s do not hold it"
    else:
        reason = f"role {caller.role!r}"
    return PermissionDenied(
        f"{principal.kind} '{principal.name}' lacks '{op.permission}'{where} ({reason}) for {op.name}",
        hint="Use access_check or whoami to see what you may do, or ask an owner or admin.",
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
    canonical = json.dumps([op.name, args], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _home_tenant(principal: Principal | None, key: KeyInfo | None) -> str | None:
    # A call that never reached a tenant is still shown to the caller's own tenant (e.g. an agent
    # probing another tenant), else it goes to the global chain.
    if key is not None and key.tenant_id is not None:
        return key.tenant_id
    return principal.tenant_id if principal is not None else None


def _noted(event: AuditEvent, note: AuditNote) -> AuditEvent:
    return event if not note.details else replace(event, args={**event.args, **note.details})


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def _clip(value: str | None, size: int) -> str | None:
    # Audit text columns take what callers sent: cut to size, NUL made visible (PostgreSQL refuses it).
    return None if value is None else encodable(str(value)[:size]).replace("\x00", "\\x00")[:size]
