"""The audit log: one append-only event per call, chained by SHA-256 per tenant.

Appending is batch-first; the chain head row serialises appenders of one chain, so sequence numbers
have no gaps and every event names the hash of the one before it. Signed checkpoints of the chain
heads join the events they cover (``audit_checkpoints``); ``audit_verify`` checks it all. Reading the
log by filters is ``audit_filters``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa

from scalemule.core import audit_checkpoints as checkpoints
from scalemule.core.access import operator
from scalemule.core.audit_checkpoints import Checkpoint, Notary
from scalemule.core.errors import NotFound
from scalemule.core.ids import new_id, utcnow
from scalemule.db.dialects import insert_for
from scalemule.db.engine import Connection
from scalemule.db.tables import audit_events, audit_heads
from scalemule.db.tables.audit import AUDIT_STORED

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

    @classmethod
    def from_row(cls, row: Any) -> AuditEvent:
        """The event an ``audit_events`` row holds (its ``hash`` and ``body``).

        Raises:
            ValueError: the body is not an event's JSON (a row edited outside ScaleMule).
        """
        return cls.from_body(row.body, row.hash)

    @classmethod
    def from_body(cls, body: str, hash: str) -> AuditEvent:
        """The event whose canonical JSON is ``body``, recorded with ``hash``.

        Raises:
            ValueError: ``body`` is not an event's JSON.
        """
        try:
            data = json.loads(body)
            data["at"] = datetime.fromisoformat(data["at"])
            return cls(**{k: v for k, v in data.items() if k in _HASHED_SET}, hash=hash)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"not an audit event's body: {exc}") from exc

    def row(self) -> dict[str, Any]:
        """The sealed event as an ``audit_events`` row."""
        return {
            "chain": self.chain,
            "seq": self.seq,
            "hash": self.hash,
            "body": _canonical_text(self, self.seq, self.prev_hash),
        }

    def canonical(self) -> bytes:
        """The bytes ``hash`` is computed over: every other field as canonical JSON."""
        return _canonical(self, self.seq, self.prev_hash)

    def digest(self) -> str:
        """SHA-256 over every field but ``hash``, in a canonical JSON form."""
        return hashlib.sha256(self.canonical()).hexdigest()


_FIELDS = tuple(f.name for f in fields(AuditEvent))
_HASHED = tuple(name for name in _FIELDS if name != "hash")
_HASHED_SET = frozenset(_HASHED)
_ZERO = timedelta(0)
# Built once: json.dumps with options builds an encoder per call, a large share of hashing an event.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _canonical_text(event: AuditEvent, seq: int, prev_hash: str) -> str:
    # Given seq and prev_hash apart, so an event is sealed with one copy instead of two.
    if event.at.utcoffset() != _ZERO:
        raise ValueError("an audit event's time must be in UTC")  # how the stored body keeps its time
    body = {name: getattr(event, name) for name in _HASHED}
    body["at"], body["seq"], body["prev_hash"] = event.at.isoformat(), seq, prev_hash
    return _CANONICAL.encode(body)


def _canonical(event: AuditEvent, seq: int, prev_hash: str) -> bytes:
    return _canonical_text(event, seq, prev_hash).encode()


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


@dataclass(frozen=True)
class _Head:
    seq: int
    hash: str
    checkpoint_seq: int = 0
    checkpoint_at: datetime | None = None


# The last head this process wrote per chain. Only a guess: the head is advanced with an UPDATE that
# matches the guessed sequence number, and a miss (another process or replica appended, or the
# transaction rolled back) falls back to reading the head under lock. It saves a read per call, and
# carries the chain's last checkpoint, so deciding whether one is due costs no statement either.
_head_guess: dict[str, _Head] = {}


def _insert_head(dialect: str) -> Any:
    table_insert = insert_for(dialect)
    return table_insert(audit_heads).on_conflict_do_nothing(index_elements=["chain"])


_select_head = sa.select(
    audit_heads.c.seq, audit_heads.c.hash, audit_heads.c.checkpoint_seq, audit_heads.c.checkpoint_at
)


async def _lock_head(conn: Connection, chain: str) -> _Head:
    query = _select_head.where(audit_heads.c.chain == chain).with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        await conn.execute(_insert_head(conn.dialect.name), {"chain": chain, "seq": 0, "hash": GENESIS_HASH})
        row = (await conn.execute(query)).one()
    return _Head(int(row.seq), str(row.hash), int(row.checkpoint_seq), row.checkpoint_at)


def _seal(events: Sequence[AuditEvent], seq: int, prev: str) -> tuple[list[AuditEvent], list[dict[str, Any]]]:
    """The events chained after ``seq`` and ``prev``, and their rows (the body as it was hashed)."""
    sealed, rows = [], []
    for event in events:
        seq += 1
        body = _canonical_text(event, seq, prev)
        digest = hashlib.sha256(body.encode()).hexdigest()
        sealed.append(replace(event, seq=seq, prev_hash=prev, hash=digest))
        rows.append({"chain": event.chain, "seq": seq, "hash": digest, "body": body})
        prev = digest
    return sealed, rows


def _checkpoints(notary: Notary | None, chained: list[AuditEvent], head: _Head) -> list[Checkpoint]:
    if notary is None:
        return []
    signed: list[Checkpoint] = []
    last_seq, last_at = head.checkpoint_seq, head.checkpoint_at
    for event in chained:
        if checkpoints.due(event.seq, event.at, last_seq, last_at):
            made = notary.try_sign(event.chain, event.seq, event.hash)
            if made is None:
                break  # recorded unsigned; the next append tries again
            signed.append(made)
            last_seq, last_at = event.seq, made.at
    return signed


_insert_event = audit_events.insert()
_head_matches = (
    audit_heads.c.chain == sa.bindparam("c"),
    audit_heads.c.seq == sa.bindparam("old_seq"),
    # The hash too: a rolled-back append and another process's committed one can share a seq.
    audit_heads.c.hash == sa.bindparam("old_hash"),
)
_advance_head = (
    audit_heads.update().where(*_head_matches).values(seq=sa.bindparam("new_seq"), hash=sa.bindparam("new_hash"))
)
# The same statement when a checkpoint is signed: the head then also records it, at no extra cost.
_advance_head_checkpointed = (
    audit_heads.update()
    .where(*_head_matches)
    .values(
        seq=sa.bindparam("new_seq"),
        hash=sa.bindparam("new_hash"),
        checkpoint_seq=sa.bindparam("cp_seq"),
        checkpoint_at=sa.bindparam("cp_at"),
    )
)


async def _advance(
    conn: Connection, notary: Notary | None, mine: list[AuditEvent], head: _Head
) -> tuple[list[AuditEvent], list[dict[str, Any]], list[Checkpoint], _Head, int] | None:
    """Chain ``mine`` to ``head`` and move the head, or None when the head has moved meanwhile; also
    returns the events' rows, the checkpoints signed and the chain's checkpoint before them."""
    chained, rows = _seal(mine, head.seq, head.hash)
    signed = _checkpoints(notary, chained, head)
    last = chained[-1]
    params = {"c": last.chain, "old_seq": head.seq, "old_hash": head.hash, "new_seq": last.seq, "new_hash": last.hash}
    if signed:
        params |= {"cp_seq": signed[-1].seq, "cp_at": signed[-1].at}
        moved = _Head(last.seq, last.hash, signed[-1].seq, signed[-1].at)
    else:
        moved = replace(head, seq=last.seq, hash=last.hash)
    statement = _advance_head_checkpointed if signed else _advance_head
    if (await conn.execute(statement, params)).rowcount != 1:
        return None
    return chained, rows, signed, moved, head.checkpoint_seq


# PostgreSQL, where every statement is a round trip: the head moved and the event inserted in one
# statement, the insert reading the update's result so that it happens only if the head matched.
_moved = _advance_head.returning(audit_heads.c.chain).cte("moved")
_insert_event_if_moved = (
    audit_events.insert()
    .from_select(
        AUDIT_STORED,
        # Named apart from the head's columns, which a parameter of the same name would add to the update.
        sa.select(*(sa.bindparam(f"e_{name}", type_=audit_events.c[name].type) for name in AUDIT_STORED)).select_from(
            _moved
        ),
    )
    .add_cte(_moved)
)


async def append_one(conn: Connection, event: AuditEvent) -> AuditEvent | None:
    """Append one event after the chain's guessed head in a single statement (PostgreSQL), which
    commits on its own on a connection in autocommit; returns it sealed, or None when another way is
    needed and nothing was written: SQLite, no guess, a checkpoint due, or the head moved meanwhile
    (``append`` then locks the head)."""
    if conn.dialect.name != "postgresql":
        return None
    head = _head_guess.get(event.chain)
    if head is None or checkpoints.due(head.seq + 1, event.at, head.checkpoint_seq, head.checkpoint_at):
        return None
    (sealed,), (row,) = _seal([event], head.seq, head.hash)
    params = {f"e_{name}": value for name, value in row.items()}
    params |= {
        "c": sealed.chain,
        "old_seq": head.seq,
        "old_hash": head.hash,
        "new_seq": sealed.seq,
        "new_hash": sealed.hash,
    }
    if (await conn.execute(_insert_event_if_moved, params)).rowcount != 1:
        _head_guess.pop(event.chain, None)  # a wrong guess: the general way reads the head under lock
        return None
    _head_guess[sealed.chain] = replace(head, seq=sealed.seq, hash=sealed.hash)
    return sealed


async def append(conn: Connection, events: Sequence[AuditEvent]) -> list[AuditEvent]:
    """Append events in order, advancing each chain's head in the same transaction; returns them sealed.

    When a chain's checkpoint is due (``audit_checkpoints.due``) and the transaction belongs to a
    runtime's database, a signed checkpoint row joins the events; its digest object is written after
    commit.
    """
    if len(events) == 1:
        sealed_one = await append_one(conn, events[0])
        if sealed_one is not None:
            return [sealed_one]
    notary = checkpoints.current_notary()
    sealed: list[AuditEvent] = []
    rows: list[dict[str, Any]] = []
    signed: list[tuple[list[Checkpoint], int]] = []
    for chain in dict.fromkeys(e.chain for e in events):
        mine = [e for e in events if e.chain == chain]
        guess = _head_guess.get(chain)
        done = None if guess is None else await _advance(conn, notary, mine, guess)
        if done is None:
            done = await _advance(conn, notary, mine, await _lock_head(conn, chain))
            assert done is not None  # the head is locked: nobody moved it
        chained, chained_rows, made, _head_guess[chain], previous = done
        if made:
            signed.append((made, previous))
        sealed += chained
        rows += chained_rows
    # A single row takes the plain execute path, cheaper than the many-rows one on every call.
    await conn.execute(_insert_event, rows[0] if len(rows) == 1 else rows)
    for made, previous in signed:
        assert notary is not None
        await checkpoints.record(conn, notary, made, previous=previous)
    return sealed


async def checkpoint_head(conn: Connection, notary: Notary, chain: str) -> Checkpoint | None:
    """Sign chain ``chain``'s current head unless it is already checkpointed (or the chain is empty),
    so that every event recorded so far is covered; returns the new checkpoint."""
    head = await _lock_head(conn, chain)
    if head.seq == 0 or head.checkpoint_seq == head.seq:
        return None
    made = notary.sign(chain, head.seq, head.hash)
    params = {"c": chain, "old_seq": head.seq, "old_hash": head.hash, "new_seq": head.seq, "new_hash": head.hash}
    await conn.execute(_advance_head_checkpointed, params | {"cp_seq": made.seq, "cp_at": made.at})
    await checkpoints.record(conn, notary, [made], previous=head.checkpoint_seq)
    _head_guess.pop(chain, None)
    return made


async def get(conn: Connection, *, tenant_id: str, event_id: str) -> tuple[AuditEvent, int]:
    """One of the tenant's events by id, and the chain's head sequence number.

    Raises:
        NotFound: no event with that id in the tenant's chain (whether or not another tenant has one).
    """
    table = audit_events
    query = sa.select(table.c.hash, table.c.body).where(table.c.id == event_id, table.c.chain == tenant_id)
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"no audit event {event_id[:64]!r} in this tenant", hint="Find event ids with audit_query.")
    head = (await conn.execute(sa.select(audit_heads.c.seq).where(audit_heads.c.chain == tenant_id))).scalar_one()
    return AuditEvent.from_row(row), int(head)
