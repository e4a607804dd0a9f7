"""Reading the audit log: ``audit_query``'s filters, each served by an index of ``audit_events``.

The table has one ``(chain, column, seq)`` index per equality filter: with chain and column fixed, the
entries run in sequence order, so the newest matches are read backwards from the end of their range,
a page at a time, whether the value is common, rare or absent. The actor filter matches an id or a
name: two such scans, merged. A time window has ``(chain, at, seq)``; a sequence number orders the
page, so which of the two indexes serves a window best depends on how many events it holds
(``FEW_IN_WINDOW``). docs/audit.md lists the indexes and what they cost.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scalemule.core.audit import AuditEvent
from scalemule.db.engine import Connection
from scalemule.db.tables import audit_events

# audit_query's equality filters and the columns they match.
_EQUAL = {
    "operation": "operation",
    "outcome": "outcome",
    "target": "target",
    "permission": "permission",
    "client": "client_name",
    "session": "session_id",
    "key": "key_id",
}
# SQLite keeps no statistics on ranges, so it cannot tell a time window holding a few events (best found
# through (chain, at, seq)) from one holding a large part of the log (best read backwards by sequence
# number, stopping after a page). ``query`` reads up to this many of the window's sequence numbers from
# its index: when that is all of them it fetches the newest by number, otherwise it tells SQLite that the
# window is wide (its ``likely()`` hint). PostgreSQL's planner decides from its statistics.
FEW_IN_WINDOW = 1000


@functools.cache
def _conditions(equal: tuple[str, ...], since: bool, until: bool, before: bool, wide: bool) -> tuple[Any, ...]:
    c = audit_events.c
    window = sa.func.likely if wide else (lambda term: term)
    where = [c.chain == sa.bindparam("chain"), *(c[_EQUAL[name]] == sa.bindparam(name) for name in equal)]
    if since:
        where.append(window(c.at >= sa.bindparam("since")))
    if until:
        where.append(window(c.at < sa.bindparam("until")))
    if before:
        where.append(c.seq < sa.bindparam("before_seq"))
    return tuple(where)


# What a page reads of each event: the rest is in its body.
_READ = (audit_events.c.seq, audit_events.c.hash, audit_events.c.body)


# Built once per combination of filters: constructing a statement costs more than running it.
@functools.cache
def _newest(equal: tuple[str, ...], actor: bool, since: bool, until: bool, before: bool, wide: bool) -> sa.Select[Any]:
    c, where = audit_events.c, _conditions(equal, since, until, before, wide)

    def newest(*conditions: Any) -> sa.Select[Any]:
        query = sa.select(*_READ).where(*where, *conditions).order_by(c.seq.desc())
        return query.limit(sa.bindparam("limit"))

    if not actor:
        return newest()
    # Two backward scans, one per index, merged: with an OR of the two columns the database would
    # collect every event of a busy actor and sort them all to return one page.
    actor_is: sa.BindParameter[str] = sa.bindparam("actor")
    by_id = newest(c.actor_id == actor_is).subquery()
    by_name = newest(c.actor_name == actor_is, c.actor_id.is_distinct_from(actor_is)).subquery()
    both = sa.union_all(sa.select(by_id), sa.select(by_name)).subquery()
    return sa.select(both).order_by(both.c.seq.desc()).limit(sa.bindparam("limit"))


@functools.cache
def _window_probe(since: bool, until: bool, before: bool) -> sa.Select[Any]:
    where = _conditions((), since, until, before, False)
    return sa.select(audit_events.c.seq).where(*where).limit(FEW_IN_WINDOW)


_by_seq = (
    sa.select(*_READ)
    .where(audit_events.c.chain == sa.bindparam("chain"), audit_events.c.seq.in_(sa.bindparam("seqs", expanding=True)))
    .order_by(audit_events.c.seq.desc())
)

Statement = tuple[Any, dict[str, Any]]


@dataclass(frozen=True)
class EventFilter:
    """What ``query`` selects: events matching every field given. ``actor`` matches a principal id or
    name, ``client`` the MCP client's name; ``since`` is inclusive, ``until`` exclusive."""

    actor: str | None = None
    operation: str | None = None
    outcome: str | None = None
    target: str | None = None
    permission: str | None = None
    client: str | None = None
    session: str | None = None
    key: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def _params(self, tenant_id: str, before_seq: int | None) -> dict[str, Any]:
        given = {f.name: getattr(self, f.name) for f in fields(self)} | {"before_seq": before_seq}
        return {"chain": tenant_id} | {name: value for name, value in given.items() if value is not None}

    @property
    def window_only(self) -> bool:
        """True when a time window is the only filter."""
        given = {f.name for f in fields(self) if getattr(self, f.name) is not None}
        return bool(given) and given <= {"since", "until"}

    def statement(
        self, tenant_id: str, *, before_seq: int | None = None, limit: int = 50, wide_window: bool = False
    ) -> Statement:
        """The statement and parameters selecting the newest ``limit`` matching events of the tenant's
        chain below ``before_seq``.

        Every filter is served by an index of ``audit_events`` (its table definition says which), so
        a page costs about the same at any log size, whether the filter matches many events or none.
        ``wide_window`` tells SQLite that most events fall in the time window.
        """
        equal = tuple(name for name in _EQUAL if getattr(self, name) is not None)
        has = (self.actor is not None, self.since is not None, self.until is not None, before_seq is not None)
        return _newest(equal, *has, wide_window), self._params(tenant_id, before_seq) | {"limit": limit}

    def window_probe(self, tenant_id: str, *, before_seq: int | None) -> Statement:
        """Up to ``FEW_IN_WINDOW`` sequence numbers of events in the time window, read from its index."""
        probe = _window_probe(self.since is not None, self.until is not None, before_seq is not None)
        return probe, self._params(tenant_id, before_seq)

    async def sqlite_statement(
        self, conn: Connection, tenant_id: str, *, before_seq: int | None, limit: int
    ) -> Statement:
        """``statement``, or for a lone time window on SQLite, one that suits its width (``FEW_IN_WINDOW``)."""
        if not self.window_only:
            return self.statement(tenant_id, before_seq=before_seq, limit=limit)
        seqs = (await conn.execute(*self.window_probe(tenant_id, before_seq=before_seq))).scalars().all()
        if len(seqs) == FEW_IN_WINDOW:
            return self.statement(tenant_id, before_seq=before_seq, limit=limit, wide_window=True)
        # Every match is known: read the newest by number.
        return _by_seq, {"chain": tenant_id, "seqs": sorted(seqs, reverse=True)[:limit]}


async def query(
    conn: Connection, *, tenant_id: str, where: EventFilter, before_seq: int | None = None, limit: int = 50
) -> list[AuditEvent]:
    """The tenant's events matching ``where``, newest first, below ``before_seq``."""
    if conn.dialect.name == "sqlite":
        statement = await where.sqlite_statement(conn, tenant_id, before_seq=before_seq, limit=limit)
    else:
        statement = where.statement(tenant_id, before_seq=before_seq, limit=limit)
    return [AuditEvent.from_row(row) for row in await conn.execute(*statement)]
