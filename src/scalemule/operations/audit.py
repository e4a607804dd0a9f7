"""Audit toolset: read the tenant's log of every call."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from scalemule.core import audit, audit_rollups
from scalemule.core.audit import AuditEvent
from scalemule.core.pages import paginate
from scalemule.operations.base import Call, Identifier, Name, PrincipalView, Result, TenantPageArgs
from scalemule.operations.registry import Resource, operation


class EventView(Result):
    """One audit event."""

    id: str
    seq: int
    at: datetime
    actor: PrincipalView | None
    key_id: str | None
    on_behalf_of: str | None
    client: str | None = Field(description="MCP clientInfo name/version")
    transport: str
    session_id: str | None
    request_id: str | None
    operation: str
    permission: str | None
    target: str | None
    args: dict[str, Any]
    outcome: str
    error_code: str | None
    duration_ms: float
    hash: str

    @classmethod
    def of(cls, e: AuditEvent) -> EventView:
        """View of ``e``."""
        actor = (
            None
            if e.actor_id is None
            else PrincipalView(id=e.actor_id, kind=e.actor_kind or "", name=e.actor_name or "")
        )
        client = None if e.client_name is None else f"{e.client_name}/{e.client_version or '?'}"
        return cls(
            id=e.id,
            seq=e.seq,
            at=e.at,
            actor=actor,
            key_id=e.key_id,
            on_behalf_of=e.on_behalf_of,
            client=client,
            transport=e.transport,
            session_id=e.session_id,
            request_id=e.request_id,
            operation=e.operation,
            permission=e.permission,
            target=e.target,
            args=e.args,
            outcome=e.outcome,
            error_code=e.error_code,
            duration_ms=round(e.duration_ms, 3),
            hash=e.hash,
        )


class AuditQueryArgs(TenantPageArgs):
    actor: Name | None = Field(default=None, description="Principal id or name.")
    operation: Identifier | None = None
    outcome: Literal["ok", "error", "denied", "cancelled"] | None = None
    since: datetime | None = Field(default=None, description="ISO 8601, inclusive.")
    until: datetime | None = Field(default=None, description="ISO 8601, exclusive.")


class EventsPage(Result):
    items: list[EventView]
    next_cursor: str | None


@operation(
    "audit_query",
    permission="audit:read",
    toolset="audit",
    read_only=True,
    idempotent=True,
    resources=(
        Resource(
            "scalemule://tenants/{tenant}/audit/recent",
            "The tenant's 50 most recent audit events; the next page: ?cursor=<next_cursor>",
            args=(("limit", 50),),
        ),
    ),
)
async def audit_query(call: Call, args: AuditQueryArgs) -> EventsPage:
    """Read the tenant's audit log, newest first, filtered by actor, operation, outcome and time.

    Every tool call and resource read is here, including denied and failed ones.
    """
    if args.cursor is None:
        # Calls recorded in aggregate (refused credentials, idle polls) show up before the first page.
        await audit_rollups.flush(call.conn, chain=call.tenant_id)
    page, next_cursor = await paginate(
        args.cursor,
        args.limit,
        lambda after, n: audit.query(
            call.conn,
            tenant_id=call.tenant_id,
            actor=args.actor,
            operation=args.operation,
            outcome=args.outcome,
            since=args.since,
            until=args.until,
            before_seq=after,
            limit=n,
        ),
        lambda e: e.seq,
    )
    return EventsPage(items=[EventView.of(e) for e in page], next_cursor=next_cursor)
