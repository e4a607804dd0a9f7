"""Signed URLs for objects: expiring, HMAC-signed capabilities to GET or PUT one object.

A token names the method, tenant, key, expiry, the principal and API key that signed it, and for GET
the version (etag) signed. Its HMAC-SHA256 key is derived (HKDF) from the newest master key, whose
version the token carries, so every replica holding the master keys verifies it and a restart changes
nothing. A store without a master key uses ``url-signing.key`` in the data directory, created 0600 on
first use.

Presenting a token is not enough: the signer's key must still be live and the signer must still hold
the permission in the tenant, so revoking a key or a membership revokes its URLs served here.

A PUT URL uploads once: its token carries a random nonce, recorded (with the URL's expiry) when the
upload commits. A second use finds the nonce and is refused; the sweep drops rows of expired URLs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from scalemule.core import identity, tenants
from scalemule.core.access import Principal, effective_permissions
from scalemule.core.crypto import Keyring
from scalemule.core.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from scalemule.core.ids import utcnow
from scalemule.db.engine import Connection
from scalemule.db.errors import constraint_errors
from scalemule.db.tables import api_keys, signed_url_uses

Method = Literal["GET", "PUT"]
URL_KEY_FILE = "url-signing.key"
DEFAULT_EXPIRY_SECONDS = 15 * 60
MAX_EXPIRY_SECONDS = 7 * 24 * 3600
_FORMAT = 1
_INFO = b"scalemule signed object URL v1"
_NEXT = "Ask for a new URL with storage_create_signed_url."
NONCE_CHARS = 32


@dataclass(frozen=True)
class Grant:
    """What a signed URL allows, as signed.

    Attributes:
        expires_at: Unix seconds after which the URL is refused.
        etag: GET only: the version signed; the URL stops working when the object changes.
        content_type: PUT only: the content type to store (else the request's, else guessed).
        nonce: PUT only: what makes the URL single-use (``new_nonce``).
    """

    method: Method
    tenant_id: str
    key: str
    expires_at: int
    principal_id: str
    key_id: str | None
    etag: str | None = None
    content_type: str | None = None
    nonce: str | None = None

    @property
    def expires(self) -> datetime:
        """``expires_at`` as a UTC datetime."""
        return datetime.fromtimestamp(self.expires_at, UTC)

    def check_live(self, now: datetime | None = None) -> Grant:
        """Return the grant unless it has expired.

        Raises:
            Unauthenticated: it expired.
        """
        if (now or utcnow()).timestamp() >= self.expires_at:
            raise Unauthenticated(f"the signed URL expired at {self.expires.isoformat()}", hint=_NEXT)
        return self


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UrlSigner:
    """Signs and verifies grant tokens with keys derived from the master keyring."""

    def __init__(self, keyring: Keyring, data_dir: Path) -> None:
        self._keyring = keyring
        self._data_dir = data_dir
        self._file_key: bytes | None = None

    def _derive(self, master: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(master)

    def _current(self) -> tuple[int, bytes]:
        if self._keyring.from_environment or self._keyring.path.is_file():
            version, master = self._keyring.current()
            return version, self._derive(master)
        return 0, self._local_key()

    def _secret(self, version: int) -> bytes:
        if version == 0:
            return self._local_key()
        return self._derive(self._keyring.get(version))

    def _local_key(self) -> bytes:
        if self._file_key is None:
            path = self._data_dir / URL_KEY_FILE
            if not path.exists():
                _create_key_file(path)
            self._file_key = base64.b64decode(path.read_text(encoding="ascii"))
        return self._file_key

    def sign(self, grant: Grant) -> str:
        """The URL-safe token for ``grant``."""
        version, secret = self._current()
        body: dict[str, Any] = {
            "v": _FORMAT,
            "kv": version,
            "m": grant.method,
            "t": grant.tenant_id,
            "k": grant.key,
            "x": grant.expires_at,
            "p": grant.principal_id,
            "i": grant.key_id,
        }
        if grant.etag is not None:
            body["e"] = grant.etag
        if grant.content_type is not None:
            body["c"] = grant.content_type
        if grant.nonce is not None:
            body["n"] = grant.nonce
        payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
        return f"{payload}.{_b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())}"

    def verify(self, token: str) -> Grant:
        """The grant ``token`` carries, if its signature holds (whether it has expired: ``Grant.check_live``).

        Raises:
            Unauthenticated: malformed, tampered with, or signed by a key no longer held.
        """
        payload, _, signature = token.partition(".")
        try:
            body = json.loads(_unb64(payload))
            version = body["kv"]
            given = _unb64(signature)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise Unauthenticated("the signed URL is malformed", hint=_NEXT) from None
        try:
            secret = self._secret(int(version))
        except (FailedPrecondition, ValueError, TypeError):
            raise Unauthenticated(
                "the signed URL was signed with a key this server does not hold", hint=_NEXT
            ) from None
        expected = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, given):
            raise Unauthenticated("the signed URL's signature does not match", hint=_NEXT)
        return _grant_of(body)


def _grant_of(body: dict[str, Any]) -> Grant:
    method, tenant_id, key, expires_at, principal_id = (body.get(f) for f in ("m", "t", "k", "x", "p"))
    if (
        body.get("v") != _FORMAT
        or method not in ("GET", "PUT")
        or not isinstance(tenant_id, str)
        or not isinstance(key, str)
        or not isinstance(principal_id, str)
        or not isinstance(expires_at, int)
    ):
        raise Unauthenticated("the signed URL is malformed", hint=_NEXT)
    nonce = body.get("n")
    if method == "PUT" and not (isinstance(nonce, str) and 0 < len(nonce) <= NONCE_CHARS):
        # PUT URLs signed before they became single-use carry none: they are refused, not reusable.
        raise Unauthenticated("this PUT URL carries no single-use nonce", hint=_NEXT)
    return Grant(
        method=method,
        tenant_id=tenant_id,
        key=key,
        expires_at=expires_at,
        principal_id=principal_id,
        key_id=body.get("i"),
        etag=body.get("e"),
        content_type=body.get("c"),
        nonce=nonce if method == "PUT" else None,
    )


def _create_key_file(path: Path) -> None:
    # Written whole to a temporary file, then linked into place: a concurrent process either creates
    # the file first (and both use its key) or sees none, never a partial key.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@dataclass(frozen=True)
class Signer:
    """The principal and key behind a grant, as they stand now."""

    principal: Principal
    key_id: str | None
    permissions: frozenset[str]


async def authorize(conn: Connection, grant: Grant, permission: str) -> Signer:
    """Check that whoever signed ``grant`` may still do it: a live key, a membership, the permission.

    Raises:
        PermissionDenied: the key was revoked or expired, or the signer lost the permission.
    """
    principal = await identity.get_principal(conn, grant.principal_id)
    membership = (
        None
        if principal is None
        else await tenants.membership_by_id(conn, principal_id=principal.id, tenant_id=grant.tenant_id)
    )
    if principal is None or membership is None:
        raise PermissionDenied("whoever signed this URL is no longer a member of its tenant", hint=_NEXT)
    scopes: frozenset[str] | None = None
    if grant.key_id is not None:
        row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == grant.key_id))).first()
        live = row is not None and row.revoked_at is None and (row.expires_at is None or row.expires_at > utcnow())
        if row is None or not live:
            raise PermissionDenied("the API key that signed this URL was revoked or has expired", hint=_NEXT)
        scopes = None if row.scopes is None else frozenset(row.scopes)
    permissions = effective_permissions(principal, membership[1], scopes)
    if permission not in permissions:
        raise PermissionDenied(f"whoever signed this URL no longer holds '{permission}'", hint=_NEXT)
    return Signer(principal, grant.key_id, permissions)


def new_nonce() -> str:
    """A fresh nonce for a PUT grant (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def _spent() -> Unauthenticated:
    return Unauthenticated(
        "this PUT URL was already used: each PUT URL uploads once",
        hint="Ask for a new one with storage_create_signed_url(method='PUT').",
    )


async def check_unspent(conn: Connection, grant: Grant) -> None:
    """Refuse a PUT grant whose URL was already used (checked before its body is read).

    Raises:
        Unauthenticated: the URL was used.
    """
    query = sa.select(signed_url_uses.c.nonce).where(signed_url_uses.c.nonce == grant.nonce)
    if (await conn.execute(query)).first() is not None:
        raise _spent()


async def spend(conn: Connection, grant: Grant) -> None:
    """Record the use of a PUT grant's URL, in the transaction that commits its upload.

    Raises:
        Unauthenticated: the URL was used already (a concurrent upload with it committed first).
    """
    row = {"nonce": grant.nonce, "tenant_id": grant.tenant_id, "expires_at": grant.expires, "used_at": utcnow()}
    async with constraint_errors({"pk_signed_url_uses": _spent}):
        await conn.execute(signed_url_uses.insert().values(**row))


async def drop_spent(conn: Connection, *, before: datetime) -> int:
    """Forget used PUT URLs that expired before ``before`` (they are refused as expired); returns how many."""
    done = await conn.execute(signed_url_uses.delete().where(signed_url_uses.c.expires_at < before))
    return int(done.rowcount)
