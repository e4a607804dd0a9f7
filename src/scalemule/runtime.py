"""The running backend: settings plus the stores every operation reaches through its Call."""

from __future__ import annotations

from dataclasses import dataclass

from scalemule.blobs import BlobStore, open_blob_store
from scalemule.core.audit_checkpoints import Notary, SigningKeys
from scalemule.core.crypto import Keyring
from scalemule.db.engine import Database
from scalemule.settings import Settings


@dataclass
class Runtime:
    """Open stores for one process. Surfaces create it once and close it on exit."""

    settings: Settings
    db: Database
    keyring: Keyring
    blobs: BlobStore
    notary: Notary

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        """Open the stores for ``settings`` (no I/O until first use); audit events appended in the
        database's transactions get signed checkpoints from this runtime's notary."""
        db = Database(settings.url)
        blobs = open_blob_store(settings)
        notary = Notary(SigningKeys(settings.data_dir), blobs)
        notary.attach(db.services)
        return cls(settings=settings, db=db, keyring=Keyring(settings.data_dir), blobs=blobs, notary=notary)

    async def close(self) -> None:
        """Release pooled connections."""
        await self.db.dispose()
        await self.blobs.close()
