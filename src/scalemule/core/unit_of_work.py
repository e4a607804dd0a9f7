"""The audited unit of work: every entry point that changes or reads state records it through here.

Dispatch (tools, resources, the CLI), signed object URLs and the operator's commands all run their work
the same way: open a transaction, run the body, append the ``ok`` event in that same transaction and
commit, so a change without its event cannot exist. A failure rolls the transaction back and is
recorded in a fresh one, with its outcome decided here and nowhere else:

- ``unauthenticated`` (a refused credential: unknown, revoked or expired key, a signed URL that does
  not verify) is *tallied* through ``audit_rollups``: one event per chain, source and minute with a
  count, so no one can grow the log by sending bad credentials;
- ``permission_denied`` is ``denied``, any other error ``error``, a cancelled request ``cancelled``,
  each one event;
- an unexpected exception becomes ``Internal``, logged, with the event id in its hint.

A successful call is appended, unless its trace asks to be tallied (a cheap call repeated often).
"""

from __future__ import annotations

import ipaddress
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import anyio

from scalemule.core import audit, audit_rollups
from scalemule.core.audit import AuditEvent
from scalemule.core.errors import Internal, PermissionDenied, ScaleMuleError, Unauthenticated
from scalemule.db.engine import Connection, Database

log = logging.getLogger("scalemule")

T = TypeVar("T")


class Trace(Protocol):
    """What a unit of work knows of its call, read when the call is recorded."""

    @property
    def operation(self) -> str:
        """The operation's name, for the server log."""
        ...

    @property
    def source(self) -> str:
        """Where the call came from (a client address, a transport): tallied calls share its bucket."""
        ...

    @property
    def tallied(self) -> bool:
        """True when a successful call should be counted into ``audit_rollups`` instead of appended."""
        ...

    def event(self, outcome: audit.Outcome, error_code: str | None) -> AuditEvent:
        """The call's audit event with this outcome."""
        ...


def outcome_of(error: ScaleMuleError) -> audit.Outcome:
    """The audit outcome of a failed call."""
    return "denied" if isinstance(error, PermissionDenied | Unauthenticated) else "error"


class UnitOfWork:
    """One audited call: its transaction, its event, and the recording of its failure.

    Use ``run`` for a body that needs one transaction. A call with several steps (a signed upload
    streams its bytes before it commits; a key rotation commits in batches) wraps them all in
    ``recorded()`` and commits its last step in ``transaction()``.
    """

    def __init__(self, db: Database, trace: Trace) -> None:
        self.db = db
        self.trace = trace
        self.event_id: str | None = None

    async def run(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``body`` in a transaction that commits with the ``ok`` event; record any failure.

        Raises:
            ScaleMuleError: the body's error, or ``Internal`` for an unexpected exception (recorded).
        """
        async with self.recorded(), self.transaction() as conn:
            return await body(conn)

    async def read(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        """Run a ``body`` that only reads, without holding up writers, then record its ``ok`` event.

        The body runs in a read snapshot (``Database.snapshot``); its event is appended after it, with
        the events of other reads of its tenant that finish meanwhile (``ReadEvents``), or, when the
        read deferred bookkeeping (e.g. a key's ``last_used_at``), in a short transaction with it. The
        result is handed back only once the event has committed, so no read goes unrecorded, and
        events stay in the order calls completed.

        Raises:
            ScaleMuleError: the body's error, or ``Internal`` for an unexpected exception (recorded).
        """
        deferred: list[Any] = []
        async with self.recorded():
            events = ReadEvents.of(self.db)
            async with self.db.snapshot(deferred) as conn:
                result = await body(conn)
                event = None if deferred or self.trace.tallied else self.trace.event("ok", None)
                sealed = None if event is None else await events.append_free(conn, event)
            if event is not None:
                self.event_id = (sealed or await events.append(event)).id
                return result
            async with self.transaction() as conn:
                for statement in deferred:
                    await conn.execute(statement)
            return result

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A transaction whose block, on success, is followed by the ``ok`` event in it, then commits."""
        async with self.db.transaction() as conn:
            yield conn
            await self._record(conn, "ok", None)

    async def commit(self) -> None:
        """Record success for a call whose steps committed on their own (batches), in a transaction of its own."""
        async with self.transaction():
            pass

    @asynccontextmanager
    async def recorded(self) -> AsyncIterator[None]:
        """Record whatever fails inside the block (in a fresh transaction) and raise it as a ScaleMuleError.

        Raises:
            ScaleMuleError: what failed, ``Internal`` for anything unexpected.
        """
        try:
            yield
        except anyio.get_cancelled_exc_class():
            # The client cancelled the request: the change is rolled back, and that is recorded.
            with anyio.CancelScope(shield=True):
                async with self.db.transaction() as conn:
                    await self._record(conn, "cancelled", None)
            raise
        except Exception as exc:
            raise await self.fail(exc) from None

    async def fail(self, exc: Exception) -> ScaleMuleError:
        """Record a failed call in a fresh transaction; returns the error to report.

        This is the one place an unexpected exception becomes an error a caller sees.
        """
        if isinstance(exc, ScaleMuleError):
            error = exc
        else:
            log.error("internal error in %s", self.trace.operation, exc_info=exc)
            error = Internal(
                "an unexpected error occurred; nothing was changed",
                hint="Retry; if it persists, report it with the audit event id.",
            )
        async with self.db.transaction() as conn:
            await self._record(conn, outcome_of(error), error.code)
        if isinstance(error, Internal) and self.event_id is not None:
            error = Internal(error.message, hint=f"{error.hint} (audit event {self.event_id})")
        return error

    async def _record(self, conn: Connection, outcome: audit.Outcome, error_code: str | None) -> None:
        event = self.trace.event(outcome, error_code)
        # The one decision "append or tally": refused credentials always, successful calls on request.
        if error_code == Unauthenticated.code or (outcome == "ok" and self.trace.tallied):
            await audit_rollups.tally(conn, event, source=self.trace.source)
            self.event_id = None
            return
        (sealed,) = await audit.append(conn, [event])
        self.event_id = sealed.id


class ReadEvents:
    """Appends the events of reads (calls that wrote nothing else) of one database, several at a time.

    Reads of one chain take turns to append. A read whose turn comes while earlier ones are still
    waiting appends them all with its own: one transaction, one head update, one commit (on
    PostgreSQL a turn of one event is one statement in autocommit, ``audit.append_one``, made on the
    read's own connection when the turn is free: ``append_free``). A read whose event an earlier turn
    appended finds it done when its own turn comes. If a turn fails or is cancelled, nothing was
    written: the others' events go back to the queue for the next turn. Appends inside a transaction
    never take a turn: their head row stays locked after their statement.
    """

    _of: weakref.WeakKeyDictionary[Database, ReadEvents] = weakref.WeakKeyDictionary()

    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiting: dict[str, list[_Waiting]] = {}
        self._turns: dict[str, anyio.Lock] = {}

    @classmethod
    def of(cls, db: Database) -> ReadEvents:
        """The appender of ``db`` (one per database in a process)."""
        found = cls._of.get(db)
        if found is None:
            found = cls._of[db] = cls(db)
        return found

    async def append(self, event: AuditEvent) -> AuditEvent:
        """Append ``event`` (with others waiting) and return it sealed, once committed."""
        mine = _Waiting(event)
        waiting = self._waiting.setdefault(event.chain, [])
        waiting.append(mine)
        try:
            async with self._turn(event.chain):
                if mine.sealed is None:
                    batch = waiting[:]
                    waiting.clear()
                    try:
                        sealed = await self._write([w.event for w in batch])
                    except BaseException:
                        waiting[:0] = [w for w in batch if w is not mine]
                        raise
                    for done, one in zip(batch, sealed, strict=True):
                        done.sealed = one
        except BaseException:
            # Cancelled or failed before a turn took it: the call is recorded as such, never as ok.
            if mine in waiting:
                waiting.remove(mine)
            raise
        assert mine.sealed is not None
        return mine.sealed

    async def append_free(self, conn: Connection, event: AuditEvent) -> AuditEvent | None:
        """Append ``event`` in one statement on ``conn``, the read's own connection in autocommit
        (PostgreSQL), when its chain's turn is free and no event waits for one; None otherwise, having
        written nothing (then ``append``, once the read has given its connection back)."""
        turn = self._turn(event.chain)
        if conn.dialect.name != "postgresql" or turn.locked() or self._waiting.get(event.chain):
            return None
        async with turn:  # free: taken at once
            return await audit.append_one(conn, event)

    def _turn(self, chain: str) -> anyio.Lock:
        turn = self._turns.get(chain)
        if turn is None:
            # A free turn is taken without a trip through the event loop (a lone read pays nothing).
            turn = self._turns[chain] = anyio.Lock(fast_acquire=True)
        return turn

    async def _write(self, events: list[AuditEvent]) -> list[AuditEvent]:
        if len(events) == 1 and self.db.dialect == "postgresql":
            async with self.db.reader() as conn:  # autocommit
                one = await audit.append_one(conn, events[0])
            if one is not None:
                return [one]
        async with self.db.transaction() as conn:
            return await audit.append(conn, events)


@dataclass
class _Waiting:
    event: AuditEvent
    sealed: AuditEvent | None = None


def network_source(address: str | None) -> str:
    """The source a refused request is tallied under: its IP address, an IPv6 one cut to its /64.

    One host usually holds a whole IPv6 /64, so counting per address would let it open a bucket per
    request.
    """
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class OperatorTrace:
    """The trace of an operator command run from the CLI; its body may fill in ``args`` and ``tenant_id``."""

    operation: str
    args: dict[str, Any]
    tenant_id: str | None = None
    target: str | None = None
    permission: str | None = None
    started: float = field(default_factory=time.perf_counter)
    source: str = "cli"
    tallied: bool = False

    def event(self, outcome: audit.Outcome, error_code: str | None) -> AuditEvent:
        """The command's event, attributed to the operator."""
        made = audit.operator_event(
            self.operation,
            self.args,
            started=self.started,
            tenant_id=self.tenant_id,
            target=self.target,
            permission=self.permission,
        )
        return replace(made, outcome=outcome, error_code=error_code)


def operator(
    db: Database,
    operation: str,
    args: dict[str, Any] | None = None,
    *,
    tenant_id: str | None = None,
    target: str | None = None,
    permission: str | None = None,
) -> tuple[UnitOfWork, OperatorTrace]:
    """The unit of work of an operator command, and its trace (to add what the command learns).

    ``await operator(db, "keys_revoke", {"key_id": k})[0].run(body)`` is a whole audited command.
    """
    trace = OperatorTrace(operation, dict(args or {}), tenant_id=tenant_id, target=target, permission=permission)
    return UnitOfWork(db, trace), trace
