"""Tamper fuzz: random tamperings of a 10,000-event log, each detected at the right sequence number.

The log is built with batched appends (checkpoints at 1, 1001, ..., 9001 and at the head, 10000).
Each tampering is applied to the stored rows, checkpoints or digest objects and verified inside one
transaction that is then rolled back (digest objects are put back by hand).
The verifier stops at the first problem, so most checks read a range starting a few events before
the tampering (``from_seq``: the range is covered by the signed checkpoints after it, and truncation
by the digest objects); every 100th check starts at genesis instead. Renumbering (after an insertion or
a deletion) and rewriting the tail (re-hashing after an edit) stop ``REACH`` events or the first
checkpoint after the tampering, beyond which the verifier never reads.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from scalemule.core import audit, audit_checkpoints, audit_verify
from scalemule.core.audit import AuditEvent
from scalemule.core.audit_checkpoints import Checkpoint, Notary, SigningKeys
from scalemule.core.ids import new_id, utcnow
from scalemule.db.engine import Connection
from scalemule.db.tables import audit_checkpoints as checkpoint_rows
from scalemule.db.tables import audit_events, audit_heads
from scalemule.db.tables.audit import AUDIT_STORED
from scalemule.runtime import Runtime

pytestmark = pytest.mark.anyio

EVENTS = 10_000
TAMPERINGS = 1_000
FROM_GENESIS_EVERY = 100
REACH = 150
EDITABLE = ("id", "at", "operation", "outcome", "duration_ms", "args", "actor_name", "target", "prev_hash", "hash")
Undo = Callable[[], Awaitable[None]]


@dataclass
class Log:
    runtime: Runtime
    chain: str
    rows: list[dict[str, Any]]  # as appended, index = seq - 1
    checkpoints: list[Checkpoint]
    # Set while a tampering runs inside a transaction that is rolled back afterwards.
    conn: Connection | None = None

    @property
    def seqs(self) -> list[int]:
        return [c.seq for c in self.checkpoints]

    async def run(self, *statements: Any) -> None:
        if self.conn is not None:
            for statement, params in statements:
                await self.conn.execute(statement, params)
            return
        async with self.runtime.db.transaction() as conn:
            for statement, params in statements:
                await conn.execute(statement, params)

    def where(self, seq: Any) -> Any:
        return sa.and_(audit_events.c.chain == self.chain, seq)

    async def verify(self, from_seq: int, batch: int = 200) -> audit_verify.Report:
        keys = self.runtime.notary.keys.public_keys()
        if self.conn is not None:
            return await self._verify(self.conn, keys, from_seq, batch)
        async with self.runtime.db.transaction() as conn:
            return await self._verify(conn, keys, from_seq, batch)

    async def _verify(self, conn: Connection, keys: Any, from_seq: int, batch: int) -> audit_verify.Report:
        async def read(query: sa.Select[Any]) -> Sequence[Any]:
            return (await conn.execute(query)).all()

        blobs = self.runtime.blobs
        return await audit_verify.verify_chain(read, blobs, keys, self.chain, from_seq=from_seq, batch=batch)


class _RollBack(Exception):
    """Ends a tampering's transaction, undoing every change it made to the database."""


async def build(runtime: Runtime) -> Log:
    chain = new_id("ten")
    for batch in range(EVENTS // 1000):
        events = [
            AuditEvent(
                at=utcnow(),
                operation=("whoami", "config_get", "storage_put_object")[i % 3],
                outcome="ok" if i % 7 else "denied",
                transport="cli",
                duration_ms=i / 7,
                args={"n": batch * 1000 + i, "key": f"k{i}"},
                tenant_id=chain,
                actor_id="agt_1",
                actor_kind="agent",
                actor_name="bot",
                target=f"t{i}",
            )
            for i in range(1000)
        ]
        async with runtime.db.transaction() as conn:
            await audit.append(conn, events)
    async with runtime.db.transaction() as conn:
        await audit.checkpoint_head(conn, runtime.notary, chain)
        rows = [
            dict(r._mapping)
            for r in await conn.execute(
                sa.select(audit_events).where(audit_events.c.chain == chain).order_by(audit_events.c.seq)
            )
        ]
        made = [audit_checkpoints.of_row(r) for r in await conn.execute(audit_checkpoints.select_checkpoints(chain))]
    return Log(runtime, chain, rows, made)


def _other(value: Any, field: str) -> Any:
    if field == "args":
        return {**value, "n": -1}
    if field == "duration_ms":
        return value + 1.5
    if field == "at":
        return value.replace(microsecond=(value.microsecond + 1) % 1_000_000)
    if field == "outcome":
        return "error" if value == "ok" else "ok"
    if field in ("prev_hash", "hash"):
        return ("1" if value[0] != "1" else "2") + value[1:]
    return f"{value}x"


def _event(row: dict[str, Any]) -> AuditEvent:
    return AuditEvent.from_body(row["body"], row["hash"])


def _edited(row: dict[str, Any], field: str) -> str:
    """The row's body with ``field`` changed (its hash left as it was)."""
    event = _event(row)
    return str(replace(event, **{field: _other(getattr(event, field), field)}).row()["body"])


def _cp_at_or_after(log: Log, seq: int) -> int:
    return next(s for s in log.seqs if s >= seq)


# Each tampering: apply it, return (expected first bad seq, accepted kinds, how to undo what the
# transaction's rollback does not).
Tampering = tuple[int, frozenset[str], Undo | None]  # None: rolled back with the transaction


async def edit(log: Log, rng: random.Random) -> Tampering:
    seq = rng.randint(1, EVENTS)
    field = rng.choice((*EDITABLE, "seq", "chain"))
    row = log.rows[seq - 1]
    if field in ("hash", "seq", "chain"):  # stored beside the body
        value = {"seq": 10**12 + seq, "chain": "ten_elsewhere"}.get(field) or _other(row[field], field)
        change = {field: value}
    else:  # a field of the event: its body is rewritten
        change = {"body": _edited(row, field)}
    await log.run((audit_events.update().where(audit_events.c.id == row["id"]).values(change), None))
    kinds = {"seq": {"missing"}, "chain": {"missing"}}.get(field, {"edited"})

    return seq, frozenset(kinds), None


async def rewrite_body(log: Log, rng: random.Random) -> Tampering:
    """The body replaced by other bytes that still parse: the same event spaced out, or an object that
    keeps only what the database derives columns from (anything else the database refuses)."""
    seq = rng.randint(1, EVENTS)
    row = log.rows[seq - 1]
    fields = json.loads(row["body"])
    if rng.random() < 0.5:
        body = json.dumps(fields, sort_keys=True, separators=(", ", ": "), ensure_ascii=False)
    else:
        body = json.dumps({"id": fields["id"], "at": fields["at"], "note": "forged"})
    await log.run((audit_events.update().where(audit_events.c.id == row["id"]).values(body=body), None))

    return seq, frozenset({"edited"}), None


async def delete(log: Log, rng: random.Random) -> Tampering:
    seq = rng.randint(1, EVENTS - 1)
    row = log.rows[seq - 1]
    await log.run((audit_events.delete().where(audit_events.c.id == row["id"]), None))

    return seq, frozenset({"missing"}), None


async def swap(log: Log, rng: random.Random) -> Tampering:
    first = rng.randint(1, EVENTS - 10)
    second = first + rng.randint(1, 8)
    a, b = log.rows[first - 1], log.rows[second - 1]
    await log.run(
        (audit_events.delete().where(audit_events.c.id.in_([a["id"], b["id"]])), None),
        (audit_events.insert(), [_stored(b, seq=first), _stored(a, seq=second)]),
    )

    return first, frozenset({"reordered"}), None


def _stored(row: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {name: row[name] for name in AUDIT_STORED} | changes


def _move(log: Log, first: int, last: int, by: int) -> list[tuple[Any, Any]]:
    """Renumber events ``first`` .. ``last`` by ``by`` (through negative numbers: PostgreSQL checks a
    unique index row by row)."""
    stretch = log.where(sa.and_(audit_events.c.seq >= first, audit_events.c.seq <= last))
    return [
        (audit_events.update().where(stretch).values(seq=-(audit_events.c.seq + by)), None),
        (audit_events.update().where(log.where(audit_events.c.seq < 0)).values(seq=-audit_events.c.seq), None),
    ]


def _park(seq: int, source: str, target: str) -> tuple[Any, Any]:
    """Move event ``seq`` from chain ``source`` to ``target``, out of the way of a renumbering."""
    where = sa.and_(audit_events.c.chain == source, audit_events.c.seq == seq)
    return (audit_events.update().where(where).values(chain=target), None)


PARKED = "ten_parked"


async def insert(log: Log, rng: random.Random) -> Tampering:
    seq = rng.randint(2, EVENTS)
    last = min(seq + REACH, EVENTS)
    before = log.rows[seq - 2]
    forged = replace(
        _event(log.rows[seq - 1]),
        id=new_id("evt"),
        seq=seq,
        prev_hash=before["hash"],
        operation="forged",
    )
    forged = replace(forged, hash=forged.digest())
    await log.run(_park(last, log.chain, PARKED), *_move(log, seq, last - 1, 1), (audit_events.insert(), forged.row()))

    return seq, frozenset({"inserted", "rewritten"}), None


async def delete_and_renumber(log: Log, rng: random.Random) -> Tampering:
    seq = rng.randint(1, EVENTS - 1)
    last = min(seq + REACH, EVENTS)
    row = log.rows[seq - 1]
    await log.run((audit_events.delete().where(audit_events.c.id == row["id"]), None), *_move(log, seq + 1, last, -1))

    return seq, frozenset({"missing"}), None


ASIDE = "ten_truncated"


async def truncate_each(log: Log, cuts: list[tuple[int, bool]]) -> list[tuple[int, audit_verify.Report]]:
    """Cut the chain after each ``seq`` (its head row too; with ``drop``, the database's checkpoints
    after it as well, leaving only the digest objects), verifying each cut. Cuts run from the longest
    chain to the shortest, so each moves only the rows the previous one kept; all are undone at the end."""
    reports = []
    kept = EVENTS
    for seq, drop in sorted(cuts, reverse=True):
        head = log.rows[seq - 1]
        beyond = sa.and_(checkpoint_rows.c.seq > seq)
        statements = [
            (
                audit_events.update().where(log.where(audit_events.c.seq.between(seq + 1, kept))).values(chain=ASIDE),
                None,
            ),
            (audit_heads.update().where(audit_heads.c.chain == log.chain).values(seq=seq, hash=head["hash"]), None),
            (checkpoint_rows.update().where(checkpoint_rows.c.chain == ASIDE).values(chain=log.chain), None),
        ]
        if drop:
            statements.append(
                (checkpoint_rows.update().where(checkpoint_rows.c.chain == log.chain, beyond).values(chain=ASIDE), None)
            )
        await log.run(*statements)
        kept = seq
        reports.append((seq, await log.verify(max(1, seq - 20))))
    last = log.rows[-1]
    await log.run(
        (audit_events.update().where(audit_events.c.chain == ASIDE).values(chain=log.chain), None),
        (audit_heads.update().where(audit_heads.c.chain == log.chain).values(seq=last["seq"], hash=last["hash"]), None),
        (checkpoint_rows.update().where(checkpoint_rows.c.chain == ASIDE).values(chain=log.chain), None),
    )
    return reports


async def rehash_tail(log: Log, rng: random.Random) -> Tampering:
    seq = rng.randint(1, EVENTS)
    end = _cp_at_or_after(log, seq)
    events = [_event(r) for r in log.rows[seq - 1 : end]]
    rewritten: list[AuditEvent] = []
    prev = events[0].prev_hash
    for event in events:
        changed = replace(event, prev_hash=prev, args={**event.args, "n": -1} if event.seq == seq else event.args)
        changed = replace(changed, hash=changed.digest())
        rewritten.append(changed)
        prev = changed.hash
    update = (
        audit_events.update()
        .where(audit_events.c.id == sa.bindparam("i"))
        .values(hash=sa.bindparam("h"), body=sa.bindparam("b"))
    )
    await log.run((update, [{"i": e.id, "h": e.hash, "b": e.row()["body"]} for e in rewritten]))

    return end, frozenset({"rewritten"}), None


async def replace_checkpoint(log: Log, rng: random.Random) -> Tampering:
    original = rng.choice(log.checkpoints)
    how = rng.choice(("hash", "foreign_key", "delete"))
    where = sa.and_(checkpoint_rows.c.chain == log.chain, checkpoint_rows.c.seq == original.seq)
    if how == "delete":
        await log.run((checkpoint_rows.delete().where(where), None))
        kinds = {"checkpoint_missing"}
    elif how == "hash":
        await log.run((checkpoint_rows.update().where(where).values(hash="f" * 64), None))
        kinds = {"bad_signature"}
    else:
        attacker = Ed25519PrivateKey.generate()
        forged = Notary(
            SigningKeys(log.runtime.settings.data_dir, {audit_checkpoints.SIGNING_KEY_ENV: _b64(attacker)}),
            log.runtime.blobs,
        ).sign(log.chain, original.seq, original.hash)
        await log.run(
            (
                checkpoint_rows.update()
                .where(where)
                .values(key_id=forged.key_id, signature=forged.signature, at=forged.at),
                None,
            )
        )
        kinds = {"unknown_key"}

    return original.seq, frozenset(kinds), None


async def tamper_digest(log: Log, rng: random.Random) -> Tampering:
    original = rng.choice(log.checkpoints)
    blobs, notary = log.runtime.blobs, log.runtime.notary
    await blobs.delete(original.digest_ref)
    kinds = {"digest_missing"}
    if rng.random() < 0.5:  # a different, validly signed statement in its place
        await notary.store_digests([notary.sign(log.chain, original.seq, "e" * 64)])
        kinds = {"digest_mismatch"}

    async def undo() -> None:
        await blobs.delete(original.digest_ref)
        await notary.store_digests([original])

    return original.seq, frozenset(kinds), undo


def _b64(key: Ed25519PrivateKey) -> str:
    import base64

    return base64.b64encode(key.private_bytes_raw()).decode()


TAMPERINGS_BY_KIND = (
    edit,
    rewrite_body,
    delete,
    swap,
    insert,
    delete_and_renumber,
    truncate_each,
    rehash_tail,
    replace_checkpoint,
    tamper_digest,
)
# Truncating and re-hashing rewrite up to thousands of rows and back: drawn less often.
WEIGHTS = (4, 1, 2, 2, 2, 2, 1, 1, 2, 2)


async def test_every_random_tampering_is_detected_at_its_first_bad_sequence_number(runtime: Runtime) -> None:
    log = await build(runtime)
    assert log.seqs == [1, *range(1001, EVENTS, 1000), EVENTS]
    clean = await log.verify(1)
    assert clean.ok and (clean.events, clean.checkpoints, clean.unsigned) == (EVENTS, len(log.seqs), 0), clean
    rng = random.Random(20261130)
    seen: dict[str, int] = {}
    cuts: list[tuple[int, bool]] = []
    with anyio.fail_after(240):
        for i in range(TAMPERINGS):
            (kind,) = rng.choices(TAMPERINGS_BY_KIND, WEIGHTS)
            seen[kind.__name__] = seen.get(kind.__name__, 0) + 1
            if kind is truncate_each:
                cuts.append((rng.randint(1, EVENTS - 1), rng.random() < 0.5))
                continue
            try:
                async with runtime.db.transaction() as conn:
                    log.conn = conn
                    expected, kinds, undo = await kind(log, rng)
                    anchor = 1 if i % FROM_GENESIS_EVERY == 0 else max(1, expected - rng.randint(1, 20))
                    report = await log.verify(anchor)
                    raise _RollBack
            except _RollBack:
                log.conn = None
            if undo is not None:  # blob store changes are not transactional
                await undo()
            assert report.problem is not None, (i, kind.__name__, expected)
            found = (report.problem.seq, report.problem.kind in kinds)
            assert found == (expected, True), (i, kind.__name__, report.problem, kinds)
        for seq, report in await truncate_each(log, cuts):
            assert report.problem is not None and (report.problem.seq, report.problem.kind) == (seq + 1, "truncated")
    assert set(seen) == {k.__name__ for k in TAMPERINGS_BY_KIND} and sum(seen.values()) == TAMPERINGS
    assert (await log.verify(1)).ok
