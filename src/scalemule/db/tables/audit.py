"""The audit log, its per-chain heads, and idempotency records of creates."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

from scalemule.db.tables.base import metadata
from scalemule.db.types import UTCDateTime

# One hash chain per tenant; chain '-' holds events that belong to no tenant.
audit_heads = sa.Table(
    "audit_heads",
    metadata,
    sa.Column("chain", sa.String(40), primary_key=True),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # The last signed checkpoint of the chain: appenders decide from these whether one is due.
    sa.Column("checkpoint_seq", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("checkpoint_at", UTCDateTime(), nullable=True),
)

# Signed statements "chain C had head hash H at sequence number S", written in the transaction of the
# events they cover and copied to the blob store as digest objects (docs/audit.md, Checkpoints).
audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("chain", sa.String(40), primary_key=True),
    sa.Column("seq", sa.BigInteger(), primary_key=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),
    # Base64 of the 64-byte Ed25519 signature over the checkpoint's canonical bytes.
    sa.Column("signature", sa.String(88), nullable=False),
)


class FromBody(sa.Computed):
    """A column of ``audit_events`` derived from the event's stored body, so that it can be indexed and
    filtered on but never disagree with what was hashed. SQLite: a virtual generated column (only its
    indexes store it). PostgreSQL: a column that the trigger ``audit_events_fields`` (migration 0013)
    fills from the body on every insert and update, parsing it once (a generated column per field
    would parse it once per field, doubling the cost of an insert); a value written to it is replaced
    by the body's."""

    inherit_cache = True

    def __init__(self, field: str) -> None:
        super().__init__(sa.literal_column(field))
        self.field = field

    def _copy(self, **_: object) -> FromBody:
        return FromBody(self.field)


def _sqlite_field(field: str) -> str:
    if field != "at":
        return f"json_extract(body, '$.{field}')"
    # The body holds Python's isoformat of a UTC time, with or without microseconds; SQLAlchemy stores
    # and binds SQLite times as "YYYY-MM-DD HH:MM:SS.ffffff", so windows compare like for like.
    at = "json_extract(body, '$.at')"
    micro = f"CASE WHEN substr({at}, 20, 1) = '.' THEN substr({at}, 20, 7) ELSE '.000000' END"
    return f"substr({at}, 1, 10) || ' ' || substr({at}, 12, 8) || {micro}"


@compiles(FromBody, "sqlite")
def _from_body_sqlite(element: FromBody, compiler: Any, **_: Any) -> str:
    return f"GENERATED ALWAYS AS ({_sqlite_field(element.field)}) VIRTUAL"


@compiles(FromBody, "postgresql")
def _from_body_postgresql(element: FromBody, compiler: Any, **_: Any) -> str:
    return ""  # an ordinary column: AUDIT_FIELDS_TRIGGER fills it


# The columns audit_query filters on by equality (its actor filter matches actor_id or actor_name), and
# their lengths.
AUDIT_QUERY_COLUMNS = {
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

# One row per event. What was hashed is stored as it was hashed: ``body`` holds the event's canonical
# JSON (every field but the hash), ``hash`` its SHA-256. ``chain`` and ``seq`` place it; every other
# column is derived from the body (``FromBody``), so no column can be edited apart from what the
# chain covers, and verifying reads only the hash and the body (docs/audit.md, Storage).
AUDIT_STORED = ("chain", "seq", "hash", "body")  # what an append writes; the rest follows from the body
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("chain", sa.String(40), primary_key=True),
    sa.Column("seq", sa.BigInteger(), primary_key=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    sa.Column("id", sa.String(40), FromBody("id"), nullable=False),
    sa.Column("at", UTCDateTime(), FromBody("at"), nullable=False),
    *(sa.Column(name, sa.String(length), FromBody(name)) for name, length in AUDIT_QUERY_COLUMNS.items()),
    sa.Index(None, "id", unique=True),
    # One index per audit_query filter, (chain, column, seq): equal chain and column leave the entries
    # in sequence order, so the newest matches are read backwards from the end of their range and a
    # page costs the same at any log size, however rare the value. Time windows use (chain, at, seq).
    # Every index is a write per event; docs/audit.md gives their cost.
    *(sa.Index(None, "chain", column, "seq") for column in AUDIT_QUERY_COLUMNS),
    sa.Index(None, "chain", "at", "seq"),
)

# Calls recorded in aggregate rather than one event each (refused credentials, idle polls): one row
# per chain, minute and kind of call, folded into a single audit event once its minute has closed.
audit_rollups = sa.Table(
    "audit_rollups",
    metadata,
    sa.Column("chain", sa.String(40), primary_key=True),
    sa.Column("window_start", UTCDateTime(), primary_key=True),
    # SHA-256 of what tells such calls apart: operation, outcome, error code, actor, key and source.
    sa.Column("bucket", sa.String(64), primary_key=True),
    # The first such call's event (its row, less id, sequence and hashes): the folded event's template.
    sa.Column("event", sa.JSON(), nullable=False),
    sa.Column("count", sa.BigInteger(), nullable=False),
    sa.Column("first_at", UTCDateTime(), nullable=False),
    sa.Column("last_at", UTCDateTime(), nullable=False),
    sa.Index(None, "window_start"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    # The tenant id for tenant-scoped operations, else the caller's principal id.
    sa.Column("scope", sa.String(40), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("operation", sa.String(64), nullable=False),
    sa.Column("request_sha256", sa.String(64), nullable=False),
    sa.Column("result", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)
