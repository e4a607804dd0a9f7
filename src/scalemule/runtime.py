"""The running backend: settings plus the stores every operation reaches through its Call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from scalemule.blobs import BlobStore, open_blob_store
from scalemule.core.audit_checkpoints import Notary, SigningKeys
from scalemule.core.crypto import Keyring
from scalemule.core.ids import utcnow
from scalemule.core.signed_urls import Grant, UrlSigner
from scalemule.core.storage_urls import ObjectUrls
from scalemule.db.engine import Database
from scalemule.settings import Settings

# Where the HTTP surface serves signed object URLs: ``<public_url>/blobs/<token>``.
BLOBS_PATH = "/blobs/"


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
        return cls(settings=settings, db=db, keyring=Keyring(settings.data_dir), blobs=blobs, notary=notary)

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

    async def close(self) -> None:
        """Release pooled connections."""
        await self.db.dispose()
        await self.blobs.close()
