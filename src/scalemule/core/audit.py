"""The audit log: one append-only event per call, chained by SHA-256 per tenant.

Appending is batch-first; the chain head row serialises appenders of one chain, so sequence numbers
have no gaps and every event names the hash of the one before it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from scalemule.core.access import operator
from scalemule.core.ids import new_id, utcnow
from scalemule.db.engine import Connection
from scalemule.db.tables import audit_events, audit_heads

Outcome = Literal["ok", "error", "denied", "cancelled"]
GLOBAL_CHAIN = "-"
GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditEvent:
    """One recorded call. ``seq``, ``prev_hash`` and ``hash`` are set when it is appended."""

    at: datetime
    operation: str
    outcome: Outcome
    transport: str
    duration_ms: float
    args: dict[str, Any]
    tenant_id: str | None = None
    actor_id: str | None = None
    actor_kind: str | None = None
    actor_name: str | None = None
    key_id: str | None = None
    on_behalf_of: str | None = None
    client_name: str | None = None
    client_version: str | None = None
    session_id: str | None = None
    request_id: str | None = None
    permission: str | None = None
    target: str | None = None
    error_code: str | None = None
    id: str = field(default_factory=lambda: new_id("evt"))
    seq: int = 0
    prev_hash: str = GENESIS_HASH
    hash: str = ""

    @property
    def chain(self) -> str:
        """The chain this event belongs to: its tenant, or the global chain."""
        return self.tenant_id or GLOBAL_CHAIN

    def row(self) -> dict[str, Any]:
        """The event as an ``audit_events`` row."""
        return {**{name: getattr(self, name) for name in _FIELDS}, "chain": self.chain}

    def digest(self) -> str:
        """SHA-256 over every field but ``hash``, in a canonical JSON form."""
        body = {name: getattr(self, name) for name in _FIELDS if name != "hash"}
        body["at"] = self.at.isoformat()
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


_FIELDS = tuple(f.name for f in fields(AuditEvent))


def operator_event(
    operation: str,
    args: dict[str, Any],
    *,
    started: float,
    tenant_id: str | None = None,
    target: str | None = None,
    permission: str | None = None,
) -> AuditEvent:
    """The audit event of an operator command run from the CLI (init, key rotation, sweep)."""
    who = operator()
    return AuditEvent(
        at=utcnow(),
        operation=operation,
        outcome="ok",
        transport="cli",
        duration_ms=(time.perf_counter() - started) * 1000,
        args=args,
        tenant_id=tenant_id,
        actor_id=who.id,
        actor_kind=who.kind,
        actor_name=who.name,
        permission=permission,
        target=target,
    )


# The last head this process wrote per chain. Only a guess: the head is advanced with an UPDATE that
# matches the guessed sequence number, and a miss (another process or replica appended, or the
# transaction rolled back) falls back to reading the head under lock. It saves a read per call.
_head_guess: dict[str, tuple[int, str]] = {}


def _insert_head(dialect: str) -> Any:
    table_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return table_insert(audit_heads).on_conflict_do_nothing(index_elements=["chain"])


async def _lock_head(conn: Connection, chain: str) -> tuple[int, str]:
    query = sa.select(audit_heads.c.seq, audit_heads.c.hash).where(audit_heads.c.chain == chain).with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        await conn.execute(_insert_head(conn.dialect.name), {"chain": chain, "seq": 0, "hash": GENESIS_HASH})
        row = (await conn.execute(query)).one()
    return int(row.seq), str(row.hash)


def _seal(events: Sequence[AuditEvent], seq: int, prev: str) -> list[AuditEvent]:
    sealed = []
    for event in events:
        seq += 1
        event = replace(event, seq=seq, prev_hash=prev)
        event = replace(event, hash=event.digest())
        prev = event.hash
        sealed.append(event)
    return sealed


_insert_event = audit_events.insert()
_advance_head = (
    audit_heads.update()
    .where(
        audit_heads.c.chain == sa.bindparam("c"),
        audit_heads.c.seq == sa.bindparam("old_seq"),
        # The hash too: a rolled-back append and another process's committed one can share a seq.
        audit_heads.c.hash == sa.bindparam("old_hash"),
    )
    .values(seq=sa.bindparam("new_seq"), hash=sa.bindparam("new_hash"))
)


async def append(conn: Connection, events: Sequence[AuditEvent]) -> list[AuditEvent]:
    """Append events in order, advancing each chain's head in the same transaction; returns them sealed."""
    sealed: list[AuditEvent] = []
    for chain in dict.fromkeys(e.chain for e in events):
        mine = [e for e in events if e.chain == chain]
        guess = _head_guess.get(chain)
        chained: list[AuditEvent] = []
        if guess is not None:
            chained = _seal(mine, *guess)
            params = {"c": chain, "old_seq": guess[0], "old_hash": guess[1]}
            params |= {"new_seq": chained[-1].seq, "new_hash": chained[-1].hash}
            if (await conn.execute(_advance_head, params)).rowcount != 1:
                chained = []
        if not chained:
            head = await _lock_head(conn, chain)
            chained = _seal(mine, *head)
            params = {"c": chain, "old_seq": head[0], "old_hash": head[1]}
            params |= {"new_seq": chained[-1].seq, "new_hash": chained[-1].hash}
            await conn.execute(_advance_head, params)
        _head_guess[chain] = (chained[-1].seq, chained[-1].hash)
        sealed += chained
    rows = [e.row() for e in sealed]
    # A single row takes the plain execute path, cheaper than the many-rows one on every call.
    await conn.execute(_insert_event, rows[0] if len(rows) == 1 else rows)
    return sealed


async def query(
    conn: Connection,
    *,
    tenant_id: str,
    actor: str | None = None,
    operation: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_seq: int | None = None,
    limit: int = 50,
) -> list[AuditEvent]:
    """The tenant's events, newest first, filtered; ``actor`` matches a principal id or name."""
    table = audit_events
    q = sa.select(table).where(table.c.chain == tenant_id).order_by(table.c.seq.desc()).limit(limit)
    if actor is not None:
        q = q.where(sa.or_(table.c.actor_id == actor, table.c.actor_name == actor))
    if operation is not None:
        q = q.where(table.c.operation == operation)
    if outcome is not None:
        q = q.where(table.c.outcome == outcome)
    if since is not None:
        q = q.where(table.c.at >= since)
    if until is not None:
        q = q.where(table.c.at < until)
    if before_seq is not None:
        q = q.where(table.c.seq < before_seq)
    fields = AuditEvent.__dataclass_fields__
    return [AuditEvent(**{k: v for k, v in row._mapping.items() if k in fields}) for row in await conn.execute(q)]
