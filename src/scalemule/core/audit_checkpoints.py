"""Signed checkpoints of the audit chains: the signing key, checkpoint rows and digest objects.

A checkpoint states, under an Ed25519 signature, that chain C had head hash H at sequence number S.
Appenders sign one at least every ``EVERY_EVENTS`` events or ``EVERY`` of activity per chain, in the
transaction of the events it covers, so a checkpoint never covers an event that was rolled back. Once
that transaction has committed, the checkpoint is also written to the blob store as a small digest
object under ``DIGEST_PREFIX`` (a ref no tenant's objects can take), away from the database: rewriting
the database alone, even with every hash recomputed, no longer matches the signed heads.

The signing key comes from ``SCALEMULE_AUDIT_SIGNING_KEY`` (base64 of the raw 32-byte private key) or
the 0600 file ``audit-signing.key`` in the data directory, created by ``scalemule init`` or on first
use. Its key id is the first 16 hex characters of the SHA-256 of the raw public key. Rotation keeps
every earlier public key in ``audit-public-keys`` (one ``<key id> <base64>`` per line), so old
checkpoints keep verifying.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from scalemule.blobs import BlobExists, BlobNotFound, BlobStore
from scalemule.core.errors import FailedPrecondition, InvalidArgument
from scalemule.core.ids import utcnow
from scalemule.db.engine import Connection, current_scope
from scalemule.db.tables import audit_checkpoints

log = logging.getLogger("scalemule")

SIGNING_KEY_ENV = "SCALEMULE_AUDIT_SIGNING_KEY"
PUBLIC_KEYS_ENV = "SCALEMULE_AUDIT_PUBLIC_KEYS"
SIGNING_KEY_FILE = "audit-signing.key"
PUBLIC_KEYS_FILE = "audit-public-keys"
DIGEST_PREFIX = "_audit"
EVERY_EVENTS = 1000
# A digest object is a few hundred bytes: read this much, in one go (a longer one is not a checkpoint).
DIGEST_BYTES = 4096
EVERY = timedelta(minutes=1)
# Prefixed to the canonical JSON before signing, so a checkpoint signature means nothing elsewhere.
_CONTEXT = b"scalemule-audit-checkpoint-v1\n"
_SERVICE = "audit_notary"


def key_id(public: bytes) -> str:
    """The id of a raw 32-byte Ed25519 public key: 16 hex characters of its SHA-256."""
    return hashlib.sha256(public).hexdigest()[:16]


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Checkpoint:
    """A signed chain head. ``signature`` is base64 of the Ed25519 signature over ``payload()``."""

    chain: str
    seq: int
    hash: str
    at: datetime
    key_id: str
    signature: str = ""

    def payload(self) -> bytes:
        """The signed bytes: a context line, then the canonical JSON of every field but the signature."""
        body = {"v": 1, "chain": self.chain, "seq": self.seq, "hash": self.hash, "at": self.at.isoformat()}
        body["key_id"] = self.key_id
        return _CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint as JSON-ready fields (``at`` in ISO 8601)."""
        return {**asdict(self), "at": self.at.isoformat()}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Checkpoint:
        """Parse ``to_dict`` output (from a digest object or an export line).

        Raises:
            InvalidArgument: a field is missing or of the wrong type.
        """
        try:
            at = body["at"] if isinstance(body["at"], datetime) else datetime.fromisoformat(body["at"])
            fields = str(body["chain"]), int(body["seq"]), str(body["hash"]), at, str(body["key_id"])
            return cls(*fields, str(body["signature"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidArgument(
                "a checkpoint record is malformed", hint="It needs chain, seq, hash, at, key_id and signature."
            ) from None

    @property
    def digest_ref(self) -> str:
        """Where its digest object is stored in the blob store."""
        return digest_ref(self.chain, self.seq)

    def digest_bytes(self) -> bytes:
        """The digest object's content: the checkpoint as canonical JSON."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    def problem(self, keys: Mapping[str, bytes]) -> str | None:
        """Why the signature does not hold under ``keys`` (key id -> raw public key), or None."""
        public = keys.get(self.key_id)
        return "unknown_key" if public is None else verify_bytes(public, self.signature, self.payload())


def verify_bytes(public: bytes, signature: str, payload: bytes) -> str | None:
    """None if ``signature`` (base64) is the Ed25519 signature of ``payload`` under ``public``, else
    ``bad_signature``."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(signature, validate=True), payload)
    except (InvalidSignature, binascii.Error, ValueError):
        return "bad_signature"
    return None


def digest_ref(chain: str, seq: int) -> str:
    """The blob ref of chain ``chain``'s digest object at ``seq`` (zero-padded: listings sort by seq)."""
    return f"{DIGEST_PREFIX}/{chain}/{seq:020d}"


def parse_public_keys(text: str) -> dict[str, bytes]:
    """Public keys from ``<key id> <base64>`` lines, bare base64 keys, commas or newlines between.

    Raises:
        InvalidArgument: an entry is not the base64 of 32 bytes, or its id does not match the key.
    """
    keys: dict[str, bytes] = {}
    for entry in (e.strip() for e in text.replace(",", "\n").splitlines()):
        if not entry or entry.startswith("#"):
            continue
        claimed, _, encoded = entry.rpartition(" ")
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32 or (claimed.strip() and claimed.strip() != key_id(raw)):
            raise InvalidArgument(
                f"malformed public key entry {entry[:40]!r}",
                hint="Each entry is '<key id> <base64 of 32 bytes>' as 'scalemule audit public-key' prints.",
            )
        keys[key_id(raw)] = raw
    return keys


def _write_new(path: Path, text: str) -> bool:
    # Written whole to a temporary file, then linked into place: a concurrent process either creates
    # the file first (and both use its key) or sees none, never a partial key. False: it existed.
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)


def _append_public(data_dir: Path, private: Ed25519PrivateKey) -> None:
    raw = _raw_public(private)
    path = data_dir / PUBLIC_KEYS_FILE
    if path.is_file() and key_id(raw) in parse_public_keys(path.read_text(encoding="ascii")):
        return
    # Private like every file of the data directory (0600), whatever the umask.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="ascii") as handle:
        handle.write(f"{key_id(raw)} {base64.b64encode(raw).decode()}\n")
        handle.flush()
        os.fsync(handle.fileno())


def create_signing_key_file(data_dir: Path) -> Path:
    """Create ``audit-signing.key`` (0600) unless it exists, recording its public key; returns its path."""
    path = data_dir / SIGNING_KEY_FILE
    if not path.exists():
        private = Ed25519PrivateKey.generate()
        raw = private.private_bytes_raw()
        if _write_new(path, base64.b64encode(raw).decode() + "\n"):
            _append_public(data_dir, private)
    return path


def _parse_private(text: str, origin: str) -> Ed25519PrivateKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise FailedPrecondition(
            f"{origin} does not hold an audit signing key",
            hint="It must be the base64 of a raw 32-byte Ed25519 private key; see docs/audit.md.",
        )
    return Ed25519PrivateKey.from_private_bytes(raw)


class SigningKeys:
    """The audit signing key in force and every public key that verifies checkpoints.

    The key file is re-read when it changes, so a rotation by ``scalemule audit rotate-signing-key``
    reaches running servers at their next checkpoint.
    """

    def __init__(self, data_dir: Path, environ: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self._environ = os.environ if environ is None else environ
        self._key: Ed25519PrivateKey | None = None
        self._stamp: int | None = None

    @property
    def path(self) -> Path:
        """The private key file (used when the environment variable is not set)."""
        return self.data_dir / SIGNING_KEY_FILE

    @property
    def from_environment(self) -> bool:
        """True when the signing key comes from ``SCALEMULE_AUDIT_SIGNING_KEY``."""
        return bool(self._environ.get(SIGNING_KEY_ENV))

    def current(self) -> tuple[str, Ed25519PrivateKey]:
        """The key id and private key that sign new checkpoints (the key file is created if absent).

        Raises:
            FailedPrecondition: the configured key is malformed.
        """
        if self.from_environment:
            if self._key is None:
                self._key = _parse_private(self._environ[SIGNING_KEY_ENV], SIGNING_KEY_ENV)
        else:
            with contextlib.suppress(FileNotFoundError):
                stamp = self.path.stat().st_mtime_ns
                if stamp != self._stamp:
                    self._key = None
            if self._key is None:
                create_signing_key_file(self.data_dir)
                self._stamp = self.path.stat().st_mtime_ns
                self._key = _parse_private(self.path.read_text(encoding="ascii"), str(self.path))
        return key_id(_raw_public(self._key)), self._key

    def public_keys(self) -> dict[str, bytes]:
        """Every verification key: the current one, the public keys file's and ``SCALEMULE_AUDIT_PUBLIC_KEYS``.

        Raises:
            FailedPrecondition: the signing key is malformed.
            InvalidArgument: a public key entry is malformed.
        """
        keys: dict[str, bytes] = {}
        path = self.data_dir / PUBLIC_KEYS_FILE
        if path.is_file():
            keys |= parse_public_keys(path.read_text(encoding="ascii"))
        keys |= parse_public_keys(self._environ.get(PUBLIC_KEYS_ENV, ""))
        if self.from_environment or self.path.is_file():
            current_id, private = self.current()
            keys[current_id] = _raw_public(private)
        return keys

    def rotate(self) -> str:
        """Replace the signing key with a fresh one, keeping the old public key; returns the new key id.

        Raises:
            FailedPrecondition: the key comes from the environment, where the operator replaces it.
        """
        if self.from_environment:
            raise FailedPrecondition(
                f"the audit signing key comes from {SIGNING_KEY_ENV}",
                hint=f"Add the old public key to {PUBLIC_KEYS_ENV}, then set a new {SIGNING_KEY_ENV} on every process.",
            )
        _, old = self.current()
        _append_public(self.data_dir, old)
        fresh = Ed25519PrivateKey.generate()
        _append_public(self.data_dir, fresh)
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(base64.b64encode(fresh.private_bytes_raw()).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        self._key, self._stamp = None, None
        return key_id(_raw_public(fresh))


class Notary:
    """Signs checkpoints for one process and writes their digest objects. The runtime attaches it to
    its database (``attach``); appenders inside that database's transactions find it there."""

    def __init__(self, keys: SigningKeys, blobs: BlobStore) -> None:
        self.keys = keys
        self.blobs = blobs
        self._warned = False

    def attach(self, services: dict[str, Any]) -> None:
        """Make this notary the one transactions on ``services``' database use."""
        services[_SERVICE] = self

    def try_sign(self, chain: str, seq: int, head: str) -> Checkpoint | None:
        """Like ``sign``, but None when the signing key is unusable (malformed, or its file cannot be
        created): the events are recorded all the same, unsigned until a later append signs them, and
        the reason is logged once per process."""
        try:
            return self.sign(chain, seq, head)
        except (FailedPrecondition, OSError) as exc:
            if not self._warned:
                self._warned = True
                log.error("audit checkpoints are not being signed: %s", exc)
            return None

    def sign(self, chain: str, seq: int, head: str) -> Checkpoint:
        """A checkpoint of ``chain`` at ``seq`` with head hash ``head``, signed now with the current key."""
        kid, private = self.keys.current()
        unsigned = Checkpoint(chain, seq, head, utcnow(), kid)
        signature = base64.b64encode(private.sign(unsigned.payload())).decode()
        return Checkpoint(chain, seq, head, unsigned.at, kid, signature)

    async def store_digests(self, checkpoints: Sequence[Checkpoint]) -> int:
        """Write each checkpoint's digest object unless an identical one is there; returns how many
        were written. Idempotent: a digest that already exists with the same bytes counts as stored."""
        written = 0
        for checkpoint in checkpoints:
            body = checkpoint.digest_bytes()
            try:
                await self.blobs.put(checkpoint.digest_ref, _once(body))
                written += 1
            except BlobExists:
                if await self.blobs.read(checkpoint.digest_ref) != body:
                    log.error("digest object %s differs from its checkpoint", checkpoint.digest_ref)
        return written


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def current_notary() -> Notary | None:
    """The notary of the transaction the caller runs in, or None (no runtime attached one)."""
    scope = current_scope()
    found = None if scope is None else scope.services.get(_SERVICE)
    return found if isinstance(found, Notary) else None


def due(seq: int, at: datetime, last_seq: int, last_at: datetime | None) -> bool:
    """True when the event at ``seq``/``at`` should be checkpointed, given the chain's last checkpoint."""
    return last_seq == 0 or last_at is None or seq - last_seq >= EVERY_EVENTS or at - last_at >= EVERY


_insert = audit_checkpoints.insert()


async def record(conn: Connection, notary: Notary, checkpoints: Sequence[Checkpoint], *, previous: int = 0) -> None:
    """Insert checkpoint rows in the caller's transaction; their digest objects follow its commit.

    ``previous`` is the chain's checkpoint before these: its digest object is written again if it is
    missing (a crash or a store outage between a commit and its digest write), so an interrupted
    write is repaired by the chain's next checkpoint.
    """
    rows = [{**asdict(c)} for c in checkpoints]
    await conn.execute(_insert, rows[0] if len(rows) == 1 else rows)
    scope = current_scope()
    if scope is None:
        return
    retry = []
    if previous:
        row = (await conn.execute(select_checkpoints(checkpoints[0].chain, previous, previous))).first()
        retry = [] if row is None else [of_row(row)]
    written = list(checkpoints)

    async def store() -> None:
        for checkpoint in retry:
            if await read_digest(notary.blobs, checkpoint.chain, checkpoint.seq) is None:
                await notary.store_digests([checkpoint])
        await notary.store_digests(written)

    scope.after_commit.append(store)


async def read_digest(blobs: BlobStore, chain: str, seq: int) -> Checkpoint | None:
    """The checkpoint stored in chain ``chain``'s digest object at ``seq``, or None if there is none.

    Raises:
        InvalidArgument: the object is there but is not a checkpoint.
    """
    try:
        body = await blobs.read(digest_ref(chain, seq), 0, DIGEST_BYTES)
    except BlobNotFound:
        return None
    try:
        return Checkpoint.from_dict(json.loads(body))
    except ValueError:
        raise InvalidArgument("a digest object is not JSON", hint="It was altered; see docs/audit.md.") from None


async def digest_seqs(blobs: BlobStore, chain: str) -> set[int]:
    """The sequence numbers of every digest object of ``chain`` (one per checkpoint: small)."""
    prefix = f"{DIGEST_PREFIX}/{chain}/"
    found: set[int] = set()
    async for entry in blobs.entries(prefix):
        tail = entry.ref[len(prefix) :]
        if tail.isdigit():
            found.add(int(tail))
    return found


def select_checkpoints(chain: str, from_seq: int = 0, to_seq: int | None = None) -> sa.Select[Any]:
    """Chain ``chain``'s checkpoint rows in ``[from_seq, to_seq]``, by sequence number."""
    table = audit_checkpoints
    query = sa.select(table).where(table.c.chain == chain, table.c.seq >= from_seq).order_by(table.c.seq)
    return query if to_seq is None else query.where(table.c.seq <= to_seq)


def of_row(row: Any) -> Checkpoint:
    """A checkpoint from an ``audit_checkpoints`` row."""
    return Checkpoint(row.chain, int(row.seq), row.hash, row.at, row.key_id, row.signature)


async def covering(conn: Connection, chain: str, seq: int) -> Checkpoint | None:
    """The first checkpoint of ``chain`` at or after ``seq`` (the one whose signature covers that
    event), or None while the event is newer than the chain's last checkpoint."""
    row = (await conn.execute(select_checkpoints(chain, seq).limit(1))).first()
    return None if row is None else of_row(row)
