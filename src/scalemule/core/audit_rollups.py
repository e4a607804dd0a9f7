"""Calls recorded in aggregate: one audit event per chain, minute and kind of call, with a count.

Some calls are too cheap for an attacker, or too frequent for an idle client, to be worth an event
each: requests with unknown or revoked credentials, signed URLs that do not verify, polls that find
nothing. Recording each would let anyone grow the log without limit; recording none would hide the
attempt. They are tallied instead: ``tally`` counts a call into its bucket (an upsert: the table never
grows with the count), and ``flush`` folds every bucket into one ordinary, hash-chained event whose
``args`` carry the count, the window and the first and last times.

Buckets of a closed minute are folded by the next tally on the same chain and by anyone reading the
log (who folds the open minute too, so a reader never misses an attempt). The number of buckets per
chain and minute is capped: past the cap, calls from further sources share one overflow bucket, so a
source that rotates addresses cannot multiply events either. Rows live in the database, so every
replica tallies into the same buckets and nothing is lost to a restart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scalemule.core import audit
from scalemule.core.audit import AuditEvent
from scalemule.core.ids import new_id, utcnow
from scalemule.db.dialects import insert_for
from scalemule.db.engine import Connection
from scalemule.db.tables import audit_rollups

WINDOW = timedelta(minutes=1)
# Distinct buckets one chain may open in one minute before further sources share the overflow bucket.
MAX_BUCKETS = 64
OVERFLOW_SOURCE = "*"
# Fields of the template that each folded event sets afresh.
_SEALED = {"id", "seq", "prev_hash", "hash"}
_TEMPLATE_FIELDS = tuple(f.name for f in fields(AuditEvent) if f.name not in _SEALED)


def window_of(at: datetime) -> datetime:
    """The start of the minute ``at`` falls in."""
    return at.replace(second=0, microsecond=0)


def _bucket(event: AuditEvent, source: str) -> str:
    parts = [event.operation, event.outcome, event.error_code, event.actor_id, event.key_id, source]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _template(event: AuditEvent, source: str) -> dict[str, Any]:
    body = {name: getattr(event, name) for name in _TEMPLATE_FIELDS}
    body["at"] = event.at.isoformat()
    body["args"] = {**event.args, "source": source}
    return body


def _upsert(dialect: str) -> Any:
    insert = insert_for(dialect)
    statement = insert(audit_rollups)
    return statement.on_conflict_do_update(
        index_elements=["chain", "window_start", "bucket"],
        set_={"count": audit_rollups.c.count + 1, "last_at": statement.excluded.last_at},
    )


_bump = (
    audit_rollups.update()
    .where(
        audit_rollups.c.chain == sa.bindparam("c"),
        audit_rollups.c.window_start == sa.bindparam("w"),
        audit_rollups.c.bucket == sa.bindparam("b"),
    )
    .values(count=audit_rollups.c.count + 1, last_at=sa.bindparam("at"))
)


async def tally(conn: Connection, event: AuditEvent, *, source: str) -> None:
    """Count ``event`` into its minute's bucket instead of appending it; fold closed minutes first.

    Args:
        conn: the unit of work; the tally commits with it.
        event: the call as it would have been recorded (its ``at`` picks the minute).
        source: where the call came from (client address, key, transport): calls from one source
            share a bucket.
    """
    await flush(conn, chain=event.chain, before=window_of(event.at))
    window = window_of(event.at)
    params = {"c": event.chain, "w": window, "b": _bucket(event, source), "at": event.at}
    if (await conn.execute(_bump, params)).rowcount == 1:
        return
    opened = sa.select(sa.func.count()).where(
        audit_rollups.c.chain == event.chain, audit_rollups.c.window_start == window
    )
    if int((await conn.execute(opened)).scalar_one()) >= MAX_BUCKETS:
        source = OVERFLOW_SOURCE
    row = {
        "chain": event.chain,
        "window_start": window,
        "bucket": _bucket(event, source),
        "event": _template(event, source),
        "count": 1,
        "first_at": event.at,
        "last_at": event.at,
    }
    # Another replica may open the same bucket between the bump and here: the upsert then counts.
    await conn.execute(_upsert(conn.dialect.name), row)


async def flush(conn: Connection, *, chain: str | None = None, before: datetime | None = None) -> int:
    """Fold buckets into audit events, oldest first; returns how many events were appended.

    Args:
        conn: the unit of work; the events and the deletions commit with it.
        chain: only this chain's buckets (None: every chain).
        before: only windows that started before this time (None: every window, the open one too).
    """
    query = _CLOSED[(chain is not None, before is not None, conn.dialect.name == "postgresql")]
    rows = (await conn.execute(query, {"c": chain, "before": before})).all()
    if not rows:
        return 0
    await audit.append(conn, [_folded(row) for row in rows])
    for row in rows:
        await conn.execute(
            audit_rollups.delete().where(
                audit_rollups.c.chain == row.chain,
                audit_rollups.c.window_start == row.window_start,
                audit_rollups.c.bucket == row.bucket,
            )
        )
    return len(rows)


def _closed(by_chain: bool, by_window: bool, lock: bool) -> Any:
    query = sa.select(audit_rollups).order_by(audit_rollups.c.window_start, audit_rollups.c.first_at)
    if by_chain:
        query = query.where(audit_rollups.c.chain == sa.bindparam("c"))
    if by_window:
        query = query.where(audit_rollups.c.window_start < sa.bindparam("before"))
    return query.with_for_update() if lock else query


# Built once: every tally (an idle claim, a task poll, a refused credential) runs one first.
_CLOSED = {(c, w, lock): _closed(c, w, lock) for c in (False, True) for w in (False, True) for lock in (False, True)}


def _folded(row: Any) -> AuditEvent:
    template = dict(row.event)
    template["at"] = datetime.fromisoformat(template["at"])
    event = AuditEvent(**template)
    summary = {
        "count": int(row.count),
        "window": row.window_start.isoformat(),
        "first_at": row.first_at.isoformat(),
        "last_at": row.last_at.isoformat(),
    }
    return replace(event, id=new_id("evt"), at=utcnow(), args={**event.args, **summary})
