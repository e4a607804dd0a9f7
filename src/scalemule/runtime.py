"""The running backend: settings plus the stores every operation reaches through its Call."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

import anyio
import sqlalchemy as sa

from scalemule.blobs import BlobStore, open_blob_store
from scalemule.blobs.base import BlobNotFound
from scalemule.core.audit_checkpoints import Notary, SigningKeys
from scalemule.core.crypto import Keyring
from scalemule.core.ids import utcnow
from scalemule.core.signed_urls import Grant, UrlSigner
from scalemule.core.storage_urls import ObjectUrls
from scalemule.db.engine import Database
from scalemule.settings import Settings

logger = logging.getLogger(__name__)

# Where the HTTP surface serves signed object URLs: ``<public_url>/blobs/<token>``.
BLOBS_PATH = "/blobs/"
# A readiness probe answers within this; a store slower than that is not ready to serve calls.
PROBE_TIMEOUT_SECONDS = 5.0
# A ref no write ever uses: reading it costs one lookup and answers "not found" from a reachable store.
_PROBE_REF = "readiness-probe"


@dataclass
class Runtime:
    """Open stores for one process. Surfaces create it once and close it on exit."""

    settings: Settings
    db: Database
    keyring: Keyring
    blobs: BlobStore
    notary: Notary
    # The time operations act at; tests replace it to move time without sleeping.
    clock: Callable[[], datetime] = field(default=utcnow)

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        """Open the stores for ``settings`` (no I/O until first use); audit events appended in the
        database's transactions get signed checkpoints from this runtime's notary."""
        db = Database(settings.url)
        blobs = open_blob_store(settings)
        notary = Notary(SigningKeys(settings.data_dir), blobs)
        notary.attach(db.services)
        keyring = Keyring(settings.data_dir, settings.keyring_environ())
        return cls(settings=settings, db=db, keyring=keyring, blobs=blobs, notary=notary)

    @cached_property
    def object_urls(self) -> ObjectUrls:
        """The signed-URL service over these stores and settings."""
        return ObjectUrls(
            db=self.db,
            blobs=self.blobs,
            signer=UrlSigner(self.keyring, self.settings.data_dir),
            quota=self.settings.storage_quota_bytes,
        )

    def signed_url(self, grant: Grant) -> str:
        """The URL under which the HTTP surface serves ``grant``."""
        return f"{self.settings.public_url.rstrip('/')}{BLOBS_PATH}{self.object_urls.sign(grant)}"

    @property
    def signed_url_server(self) -> str:
        """What serves the URLs ``signed_url`` makes, as a caller is told it."""
        return f"scalemule serve --transport http at {self.settings.public_url} (SCALEMULE_PUBLIC_URL)"

    async def readiness(self) -> dict[str, bool]:
        """Whether the database answers ``SELECT 1`` and the blob store answers a lookup."""
        return {"database": await _probe(self._probe_database), "storage": await _probe(self._probe_storage)}

    async def _probe_database(self) -> None:
        async with self.db.reader() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def _probe_storage(self) -> None:
        with contextlib.suppress(BlobNotFound):
            await self.blobs.read(_PROBE_REF, 0, 0)

    async def close(self) -> None:
        """Release pooled connections."""
        await self.db.dispose()
        await self.blobs.close()


async def _probe(check: Callable[[], Awaitable[None]]) -> bool:
    try:
        with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
            await check()
    # A probe reports any failure as "not ready" (the cause goes to the log, never to the caller):
    # a driver, network or filesystem error must not escape as a 500 naming its internals.
    except Exception:
        logger.warning("readiness probe %s failed", getattr(check, "__name__", "check"), exc_info=True)
        return False
    return True
