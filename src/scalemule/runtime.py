"""The running backend: settings plus the stores every operation reaches through its Call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from scalemule.blobs import BlobStore, open_blob_store
from scalemule.core.crypto import Keyring
from scalemule.core.ids import utcnow
from scalemule.db.engine import Database
from scalemule.settings import Settings


@dataclass
class Runtime:
    """Open stores for one process. Surfaces create it once and close it on exit."""

    settings: Settings
    db: Database
    keyring: Keyring
    blobs: BlobStore
    # The time operations act at; tests replace it to move time without sleeping.
    clock: Callable[[], datetime] = field(default=utcnow)

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        """Open the stores for ``settings`` (no I/O until first use)."""
        return cls(
            settings=settings,
            db=Database(settings.url),
            keyring=Keyring(settings.data_dir),
            blobs=open_blob_store(settings),
        )

    async def close(self) -> None:
        """Release pooled connections."""
        await self.db.dispose()
        await self.blobs.close()
