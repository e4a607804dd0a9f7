"""Serving signed object URLs: the one path other than dispatch by which objects are read or written.

The token is the credential, so these requests bypass API-key authentication; they are authorized
again here (the signer must still hold the permission) and recorded by the same audited unit of work
as dispatch (``core.unit_of_work``): a write commits with its event, a refusal or failure is
recorded in a fresh transaction, and a token that does not verify is tallied, never an event each.
Which URL path serves them is the HTTP surface's business; this module signs, checks and serves bytes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from scalemule.blobs import BlobStore
from scalemule.core import audit, object_rules, signed_urls, storage
from scalemule.core.audit import AuditEvent
from scalemule.core.errors import NotFound, PermissionDenied, ScaleMuleError
from scalemule.core.ids import utcnow
from scalemule.core.signed_urls import Grant, Signer, UrlSigner, authorize
from scalemule.core.storage import StoredObject, WriteRequest
from scalemule.core.unit_of_work import UnitOfWork
from scalemule.db.engine import Database

_FORM_DEFAULT = "application/x-www-form-urlencoded"


@dataclass
class _Trace:
    """What is known of a request so far: the trace its unit of work records."""

    operation: str
    client: str | None
    source: str
    started: float = field(default_factory=time.perf_counter)
    grant: Grant | None = None
    signer: Signer | None = None
    tallied: bool = False

    def event(self, outcome: audit.Outcome, error_code: str | None) -> AuditEvent:
        """The request's audit event: the signer as actor, the object key as target."""
        grant, signer = self.grant, self.signer
        principal = signer.principal if signer is not None else None
        args: dict[str, object] = {}
        if grant is not None:
            args = {"key": grant.key, "method": grant.method, "expires_at": grant.expires.isoformat()}
        return AuditEvent(
            at=utcnow(),
            operation=self.operation,
            outcome=outcome,
            transport="http",
            duration_ms=(time.perf_counter() - self.started) * 1000,
            args=args,
            tenant_id=grant.tenant_id if grant is not None else None,
            actor_id=principal.id if principal else (grant.principal_id if grant else None),
            actor_kind=principal.kind if principal else None,
            actor_name=principal.name if principal else None,
            key_id=grant.key_id if grant is not None else None,
            on_behalf_of=principal.on_behalf_of if principal else None,
            client_name=None if self.client is None else self.client[:200],
            permission="storage:read" if self.operation.endswith("get") else "storage:write",
            target=None if grant is None else grant.key,
            error_code=error_code,
        )


class ObjectUrls:
    """Signs object URL tokens and serves them (GET and PUT), each request an audited unit of work."""

    def __init__(self, *, db: Database, blobs: BlobStore, signer: UrlSigner, quota: int) -> None:
        self.db = db
        self.blobs = blobs
        self.signer = signer
        self.quota = quota

    def sign(self, grant: Grant) -> str:
        """The token for ``grant``: the credential a signed URL carries."""
        return self.signer.sign(grant)

    async def open_get(self, token: str, *, client: str | None = None, source: str = "unknown") -> Download:
        """Authorize a signed GET and record it; the returned download streams verified bytes.

        Args:
            token: the token from the URL.
            client: the user agent, recorded as the event's client.
            source: where the request came from (``network_source``), for tallied refusals.

        Raises:
            Unauthenticated: the token is malformed, tampered with or expired.
            PermissionDenied: not a GET token, or its signer lost access.
            NotFound: the object was deleted or replaced since signing.
        """
        trace = _Trace("storage_url_get", client, source)
        work = UnitOfWork(self.db, trace)
        async with work.recorded():
            grant = trace.grant = self.signer.verify(token)
            _check(grant, "GET")
            async with work.transaction() as conn:
                trace.signer = await authorize(conn, grant, "storage:read")
                obj = await storage.find(conn, tenant_id=grant.tenant_id, key=grant.key)
                if obj is None or obj.etag != grant.etag:
                    raise NotFound(
                        "the object was deleted or replaced since this URL was signed",
                        hint="Ask for a new URL with storage_create_signed_url.",
                    )
        return Download(self.blobs, obj, work)

    async def put(
        self,
        token: str,
        body: AsyncIterable[bytes],
        *,
        content_type: str | None,
        content_length: int | None,
        client: str | None = None,
        source: str = "unknown",
        refuse: ScaleMuleError | None = None,
    ) -> StoredObject:
        """Store the request body as the object a signed PUT names, once, and record it.

        The body streams to a fresh blob outside any transaction; metadata, the URL's use and the
        audit event then commit together.

        Raises:
            Unauthenticated: the token is malformed, tampered with, expired or already used.
            PermissionDenied: not a PUT token, or its signer lost access.
            InvalidArgument: a malformed content type.
            QuotaExceeded: the body does not fit in the tenant's quota.
            ScaleMuleError: ``refuse``, when the surface does not take uploads (recorded all the same).
        """
        trace = _Trace("storage_url_put", client, source)
        work = UnitOfWork(self.db, trace)
        async with work.recorded():
            grant = trace.grant = self.signer.verify(token)
            _check(grant, "PUT")
            if refuse is not None:
                raise refuse
            if content_type is not None and content_type.split(";")[0].strip().lower() == _FORM_DEFAULT:
                content_type = None  # what curl and urllib send for any body: says nothing of the object
            chosen = grant.content_type or content_type or object_rules.guess_content_type(grant.key, text=False)
            async with self.db.transaction() as conn:
                trace.signer = await authorize(conn, grant, "storage:write")
                await signed_urls.check_unspent(conn, grant)
                request = WriteRequest(
                    tenant_id=grant.tenant_id,
                    key=object_rules.check_key(grant.key),
                    content_type=object_rules.check_content_type(chosen),
                    metadata={},
                    writer=grant.principal_id,
                )
                room = await storage.allowance(conn, request, quota=self.quota)
            if content_length is not None:
                room.refuse(content_length, self.quota)
            blob = await storage.write_blob(self.blobs, grant.tenant_id, body, limit=room.limit)
            async with work.transaction() as conn:
                trace.signer = await authorize(conn, grant, "storage:write")
                await signed_urls.spend(conn, grant)
                obj = await storage.commit(conn, self.blobs, request, blob, quota=self.quota)
        return obj


def _check(grant: Grant, method: str) -> None:
    grant.check_live()
    if grant.method != method:
        raise PermissionDenied(
            f"this URL was signed for {grant.method}, not {method}",
            hint=f"Use {grant.method}, or ask for a {method} URL with storage_create_signed_url.",
        )


class Download:
    """An authorized signed GET: the object's metadata and its verified bytes."""

    def __init__(self, blobs: BlobStore, obj: StoredObject, work: UnitOfWork) -> None:
        self._blobs = blobs
        self._work = work
        self.object = obj

    @property
    def last_modified(self) -> datetime:
        """When the object was last written."""
        return self.object.updated_at.astimezone(UTC)

    async def chunks(self, offset: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``offset``..``end``, each window verified before it is yielded.

        Raises:
            Internal: the stored bytes fail verification (recorded as a failed read).
        """
        try:
            async for piece in storage.stream(self._blobs, self.object, offset, end):
                yield piece
        except ScaleMuleError as exc:
            raise await self._work.fail(exc) from None
