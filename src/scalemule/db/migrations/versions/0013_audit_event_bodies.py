"""audit events stored as the bytes that were hashed

Each ``audit_events`` row held the event's fields as columns, and its hash was computed over their
canonical JSON, so checking a hash meant rebuilding that JSON from the columns (most of the cost of
verifying). A row is now ``(chain, seq, hash, body)``, ``body`` being the canonical JSON itself; the
columns that filters and ``audit_get`` need are derived from the body by the database (generated
columns on SQLite, a trigger on PostgreSQL), so none of them can say other than what the chain covers.

Existing events are copied with their bodies rebuilt from their columns, exactly as their hashes were
computed; an event edited before the upgrade therefore still fails verification after it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

import scalemule.db.types

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Written out rather than imported from the tables: a migration stays what it was when released.
_QUERY_COLUMNS = {
    "operation": 64,
    "outcome": 16,
    "actor_id": 40,
    "actor_name": 320,
    "target": 1100,
    "permission": 64,
    "client_name": 200,
    "session_id": 100,
    "key_id": 40,
}
_INDEXES = {f"ix_audit_events_chain_{column}_seq": ["chain", column, "seq"] for column in _QUERY_COLUMNS} | {
    "ix_audit_events_chain_at_seq": ["chain", "at", "seq"]
}
# PostgreSQL: one trigger fills the derived columns from the body, parsing it once, on every insert and
# update (a write to a derived column is replaced by the body's value). Its JSON functions refuse a
# \u0000 escape anywhere in a document (text cannot hold NUL) and an argument may carry one: a real
# escape (after an even number of backslashes) reads as U+FFFD, only its hex digits changing. A body's
# time always carries its UTC offset, so reading it does not depend on the session's time zone.
# Dollar-quoted strings are taken as written whatever standard_conforming_strings says.
_FIELDS_FUNCTION = r"""
CREATE FUNCTION scalemule_audit_fields() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE
    fields jsonb := (CASE WHEN strpos(NEW.body, $s$\u0000$s$) = 0 THEN NEW.body
        ELSE regexp_replace(NEW.body, $s$(?<!\\)((?:\\\\)*)\\u0000$s$, $s$\1\\ufffd$s$, 'g') END)::jsonb;
BEGIN
    NEW.id := fields ->> 'id';
    NEW.operation := fields ->> 'operation';
    NEW.outcome := fields ->> 'outcome';
    NEW.actor_id := fields ->> 'actor_id';
    NEW.actor_name := fields ->> 'actor_name';
    NEW.target := fields ->> 'target';
    NEW.permission := fields ->> 'permission';
    NEW.client_name := fields ->> 'client_name';
    NEW.session_id := fields ->> 'session_id';
    NEW.key_id := fields ->> 'key_id';
    NEW.at := (fields ->> 'at')::timestamptz;
    RETURN NEW;
END $f$
"""
_FIELDS_TRIGGER = (
    "CREATE TRIGGER audit_events_fields BEFORE INSERT OR UPDATE ON audit_events"
    " FOR EACH ROW EXECUTE FUNCTION scalemule_audit_fields()"
)
_SQLITE_AT = "json_extract(body, '$.at')"
_SQLITE_FIELD = {
    "at": (
        f"substr({_SQLITE_AT}, 1, 10) || ' ' || substr({_SQLITE_AT}, 12, 8) || "
        f"CASE WHEN substr({_SQLITE_AT}, 20, 1) = '.' THEN substr({_SQLITE_AT}, 20, 7) ELSE '.000000' END"
    )
}
# Every field but the hash, as the chain's canonical JSON has them (the old table's columns).
_OLD_FIELDS = (
    "id", "seq", "at", "tenant_id", "actor_id", "actor_kind", "actor_name", "key_id", "on_behalf_of",
    "client_name", "client_version", "transport", "session_id", "request_id", "operation", "permission",
    "target", "args", "outcome", "error_code", "duration_ms", "prev_hash",
)  # fmt: skip
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
_COPY_BATCH = 5000


def _derived(dialect: str, field: str, kind: str, *, not_null: bool = False) -> str:
    """A column derived from the body: generated on SQLite, filled by the trigger on PostgreSQL."""
    null = " NOT NULL" if not_null else ""
    if dialect != "sqlite":
        return f"{field} {kind}{null}"
    expression = _SQLITE_FIELD.get(field, f"json_extract(body, '$.{field}')")
    return f"{field} {kind} GENERATED ALWAYS AS ({expression}) VIRTUAL{null}"


def _create_table(dialect: str) -> None:
    at_kind = "DATETIME" if dialect == "sqlite" else "TIMESTAMP WITH TIME ZONE"
    columns = [
        "chain VARCHAR(40) NOT NULL",
        "seq BIGINT NOT NULL",
        "hash VARCHAR(64) NOT NULL",
        "body TEXT NOT NULL",
        _derived(dialect, "id", "VARCHAR(40)", not_null=True),
        _derived(dialect, "at", at_kind, not_null=True),
        *(_derived(dialect, name, f"VARCHAR({length})") for name, length in _QUERY_COLUMNS.items()),
        "CONSTRAINT pk_audit_events PRIMARY KEY (chain, seq)",
    ]
    op.execute("CREATE TABLE audit_events (\n    " + ",\n    ".join(columns) + "\n)")


_old_events = sa.Table(
    "audit_events_old",
    sa.MetaData(),
    sa.Column("chain", sa.String(40)),
    sa.Column("hash", sa.String(64)),
    sa.Column("at", scalemule.db.types.UTCDateTime()),
    sa.Column("args", sa.JSON()),
    *(sa.Column(name) for name in _OLD_FIELDS if name not in ("at", "args")),
)


def _batches(bind: sa.Connection, table: Any) -> Iterator[list[Any]]:
    """Every row of ``table`` by chain and sequence number, ``_COPY_BATCH`` at a time."""
    last = ("", 0)
    while True:
        after = sa.tuple_(table.c.chain, table.c.seq) > sa.tuple_(sa.literal(last[0]), sa.literal(last[1]))
        query = sa.select(table).where(after).order_by(table.c.chain, table.c.seq).limit(_COPY_BATCH)
        rows = list(bind.execute(query))
        if not rows:
            return
        yield rows
        last = (rows[-1].chain, rows[-1].seq)


def _body(row: Any) -> str:
    fields = {name: getattr(row, name) for name in _OLD_FIELDS}
    fields["at"] = row.at.astimezone(UTC).isoformat()
    return str(_CANONICAL.encode(fields))


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    for name in _INDEXES:
        op.drop_index(name, table_name="audit_events")
    op.rename_table("audit_events", "audit_events_old")
    if dialect == "postgresql":
        # Index and constraint names share the schema's namespace with the new table's.
        op.execute("ALTER INDEX pk_audit_events RENAME TO pk_audit_events_old")
        op.execute("ALTER INDEX uq_audit_events_chain_seq RENAME TO uq_audit_events_old_chain_seq")
        op.execute(_FIELDS_FUNCTION)
    _create_table(dialect)
    if dialect == "postgresql":
        op.execute(_FIELDS_TRIGGER)
    insert = sa.text("INSERT INTO audit_events (chain, seq, hash, body) VALUES (:chain, :seq, :hash, :body)")
    for rows in _batches(bind, _old_events):
        bind.execute(insert, [{"chain": r.chain, "seq": r.seq, "hash": r.hash, "body": _body(r)} for r in rows])
    op.drop_table("audit_events_old")
    op.create_index("ix_audit_events_id", "audit_events", ["id"], unique=True)
    for name, columns in _INDEXES.items():
        op.create_index(name, "audit_events", columns)


def downgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.rename_table("audit_events", "audit_events_new")
    op.drop_index("ix_audit_events_id", table_name="audit_events_new")
    for name in _INDEXES:
        op.drop_index(name, table_name="audit_events_new")
    if dialect == "postgresql":
        op.execute("ALTER INDEX pk_audit_events RENAME TO pk_audit_events_new")
    old = op.create_table(
        "audit_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("chain", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("at", scalemule.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=True),
        sa.Column("actor_id", sa.String(length=40), nullable=True),
        sa.Column("actor_kind", sa.String(length=16), nullable=True),
        sa.Column("actor_name", sa.String(length=320), nullable=True),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("on_behalf_of", sa.String(length=40), nullable=True),
        sa.Column("client_name", sa.String(length=200), nullable=True),
        sa.Column("client_version", sa.String(length=100), nullable=True),
        sa.Column("transport", sa.String(length=16), nullable=False),
        sa.Column("session_id", sa.String(length=100), nullable=True),
        sa.Column("request_id", sa.String(length=100), nullable=True),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("permission", sa.String(length=64), nullable=True),
        sa.Column("target", sa.String(length=1100), nullable=True),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint("outcome IN ('ok', 'error', 'denied', 'cancelled')", name=op.f("ck_audit_events_outcome")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("chain", "seq", name=op.f("uq_audit_events_chain_seq")),
    )
    assert old is not None
    new = sa.table("audit_events_new", sa.column("chain"), sa.column("seq"), sa.column("hash"), sa.column("body"))
    for rows in _batches(bind, new):
        values = []
        for row in rows:
            fields = json.loads(row.body)
            fields["at"] = datetime.fromisoformat(fields["at"])
            values.append({**fields, "chain": row.chain, "hash": row.hash})
        bind.execute(old.insert(), values)
    op.drop_table("audit_events_new")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION scalemule_audit_fields()")
    for name, columns in _INDEXES.items():
        op.create_index(name, "audit_events", columns)
