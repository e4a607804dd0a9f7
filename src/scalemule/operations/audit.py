"""Audit toolset: read the tenant's log of every call, one event with its proof, and verify the chain."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from scalemule.core import audit, audit_checkpoints, audit_filters, audit_rollups, audit_verify
from scalemule.core.audit import AuditEvent
from scalemule.core.audit_checkpoints import Checkpoint
from scalemule.core.pages import paginate
from scalemule.operations.base import Call, Identifier, Name, PrincipalView, Result, TenantArgs, TenantPageArgs
from scalemule.operations.registry import Resource, operation

ResponseFormat = Literal["concise", "detailed"]
# Left out of concise events: what identifies the call's plumbing and proves the chain.
_DETAILED = frozenset(
    {"key_id", "on_behalf_of", "transport", "session_id", "request_id", "permission", "args", "duration_ms"}
    | {"prev_hash", "hash"}
)


class EventView(Result):
    """One audit event. Concise views carry who, what, on what and how it went; detailed ones add the
    arguments, the plumbing ids and the hashes."""

    id: str
    seq: int
    at: datetime
    actor: PrincipalView | None
    client: str | None = Field(description="MCP clientInfo name/version")
    operation: str
    target: str | None
    outcome: str
    error_code: str | None
    key_id: str | None = None
    on_behalf_of: str | None = None
    transport: str | None = None
    session_id: str | None = None
    request_id: str | None = None
    permission: str | None = None
    args: dict[str, Any] | None = None
    duration_ms: float | None = None
    prev_hash: str | None = None
    hash: str | None = None

    @model_serializer(mode="wrap")
    def _drop_absent_details(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        body: dict[str, Any] = handler(self)
        return {k: v for k, v in body.items() if v is not None or k not in _DETAILED}

    @classmethod
    def of(cls, e: AuditEvent, response_format: ResponseFormat = "detailed") -> EventView:
        """View of ``e``, concise or detailed."""
        actor = (
            None
            if e.actor_id is None
            else PrincipalView(id=e.actor_id, kind=e.actor_kind or "", name=e.actor_name or "")
        )
        client = None if e.client_name is None else f"{e.client_name}/{e.client_version or '?'}"
        concise = cls(
            id=e.id,
            seq=e.seq,
            at=e.at,
            actor=actor,
            client=client,
            operation=e.operation,
            target=e.target,
            outcome=e.outcome,
            error_code=e.error_code,
        )
        if response_format == "concise":
            return concise
        details = {name: getattr(e, name) for name in _DETAILED} | {"duration_ms": round(e.duration_ms, 3)}
        return concise.model_copy(update=details)


class AuditQueryArgs(TenantPageArgs):
    actor: Name | None = Field(default=None, description="Principal id or name.")
    operation: Identifier | None = Field(default=None, description="Tool name, e.g. config_set.")
    outcome: Literal["ok", "error", "denied", "cancelled"] | None = Field(
        default=None, description="Only this outcome."
    )
    target: str | None = Field(default=None, max_length=1000, description="What the call acted on, exactly.")
    permission: Identifier | None = Field(default=None, description="e.g. secrets:reveal")
    client: Name | None = Field(default=None, description="MCP client name (clientInfo.name).")
    session: Name | None = Field(default=None, description="MCP session id.")
    key: Identifier | None = Field(default=None, description="API key id.")
    since: datetime | None = Field(default=None, description="ISO 8601, inclusive.")
    until: datetime | None = Field(default=None, description="ISO 8601, exclusive.")
    response_format: ResponseFormat = Field(
        default="concise", description="detailed adds args, key/session/request ids, duration and hashes."
    )


class EventsPage(Result):
    items: list[EventView]
    next_cursor: str | None


@operation(
    "audit_query",
    title="Query the audit log",
    permission="audit:read",
    toolset="audit",
    read_only=True,
    idempotent=True,
    resources=(
        Resource(
            "scalemule://tenants/{tenant}/audit/recent",
            "The tenant's 50 most recent audit events; the next page: ?cursor=<next_cursor>",
            args=(("limit", 50),),
            name="audit-recent",
        ),
    ),
)
async def audit_query(call: Call, args: AuditQueryArgs) -> EventsPage:
    """Read the tenant's audit log, newest first, filtered by actor, operation, outcome, target,
    permission, client, session, key and time.

    Every tool call and resource read is here, including denied and failed ones. Use audit_get for one
    event with its proof, audit_verify to check the whole log.
    """
    if args.cursor is None:
        # Calls recorded in aggregate (refused credentials, idle polls) show up before the first page.
        async with call.bookkeeping() as conn:
            await audit_rollups.flush(conn, chain=call.tenant_id)
    where = audit_filters.EventFilter(
        actor=args.actor,
        operation=args.operation,
        outcome=args.outcome,
        target=args.target,
        permission=args.permission,
        client=args.client,
        session=args.session,
        key=args.key,
        since=args.since,
        until=args.until,
    )
    page, next_cursor = await paginate(
        args.cursor,
        args.limit,
        lambda after, n: audit_filters.query(
            call.conn, tenant_id=call.tenant_id, where=where, before_seq=after, limit=n
        ),
        lambda e: e.seq,
    )
    return EventsPage(items=[EventView.of(e, args.response_format) for e in page], next_cursor=next_cursor)


class CheckpointView(Result):
    """A signed chain head: verify ``signature`` (base64 Ed25519) over the checkpoint's canonical
    bytes with the public key ``key_id`` (docs/audit.md)."""

    seq: int
    hash: str
    at: datetime
    key_id: str
    signature: str

    @classmethod
    def of(cls, c: Checkpoint) -> CheckpointView:
        """View of ``c``."""
        return cls(seq=c.seq, hash=c.hash, at=c.at, key_id=c.key_id, signature=c.signature)


class AuditGetArgs(TenantArgs):
    event_id: Identifier = Field(description="An event id (evt_...) from audit_query or an error hint.")


class EventProof(Result):
    event: EventView
    head_seq: int = Field(description="The chain's latest sequence number.")
    checkpoint: CheckpointView | None = Field(
        description="The first signed checkpoint at or after the event; null until the next one is signed."
    )


@operation(
    "audit_get",
    title="Get one audit event with its proof",
    permission="audit:read",
    toolset="audit",
    read_only=True,
    idempotent=True,
    target="event_id",
)
async def audit_get(call: Call, args: AuditGetArgs) -> EventProof:
    """Get one audit event in full (arguments, hashes) with its chain position and the signed checkpoint
    that covers it.

    Use audit_query to find events, audit_verify to check the chain they belong to.
    """
    event, head = await audit.get(call.conn, tenant_id=call.tenant_id, event_id=args.event_id)
    checkpoint = await audit_checkpoints.covering(call.conn, event.chain, event.seq)
    return EventProof(
        event=EventView.of(event),
        head_seq=head,
        checkpoint=None if checkpoint is None else CheckpointView.of(checkpoint),
    )


class AuditVerifyArgs(TenantArgs):
    from_seq: int = Field(default=1, ge=1, description="First sequence number to check (1: from genesis).")
    to_seq: int | None = Field(default=None, ge=1, description="Last one (default: the head).")


class ProblemView(Result):
    seq: int = Field(description="The first bad sequence number.")
    kind: str = Field(
        description="edited, missing, inserted, reordered, truncated, rewritten, bad_signature, unknown_key,"
        " digest_missing, digest_mismatch or checkpoint_missing"
    )
    detail: str


class VerifyView(Result):
    ok: bool
    from_seq: int
    to_seq: int = Field(description="Last sequence number checked.")
    events: int
    checkpoints: int = Field(description="Checkpoints whose signature, digest object and hash were checked.")
    last_checkpoint: int | None
    unsigned: int = Field(description="Events after the last checkpoint: chained, not yet signed.")
    problem: ProblemView | None


@operation(
    "audit_verify",
    title="Verify the audit log",
    permission="audit:read",
    toolset="audit",
    read_only=True,
    idempotent=True,
    task=True,
)
async def audit_verify_chain(call: Call, args: AuditVerifyArgs) -> VerifyView:
    """Verify the tenant's audit log: every event's hash and link, every signed checkpoint and its digest
    object, from genesis or from_seq. Names the first bad sequence number and what is wrong.

    Reads the whole range (seconds per million events); MCP Tasks clients get a task handle. Use
    audit_get to check a single event's proof.
    """

    async def read(query: sa.Select[Any]) -> Sequence[Any]:
        return (await call.conn.execute(query)).all()

    def progress(done: int, total: int) -> None:
        call.report(done / total if total else 1.0, f"{done:,} of {total:,} events checked")

    keys = call.runtime.notary.keys.public_keys()
    segments = audit_verify.Segments.of(call.runtime.db)
    report = await audit_verify.verify_chain(
        read,
        call.runtime.blobs,
        keys,
        call.tenant_id,
        from_seq=args.from_seq,
        to_seq=args.to_seq,
        progress=progress,
        segments=segments,
    )
    body = report.to_dict()
    body.pop("chain")
    return VerifyView.model_validate(body)
