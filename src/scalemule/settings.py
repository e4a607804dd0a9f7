"""Process settings, read once from the environment at the edge (CLI or server start)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Where ScaleMule keeps its state and how it is reached.

    Attributes:
        data_dir: the embedded store's directory (SQLite file, blobs, key files).
        database_url: SQLAlchemy async URL; defaults to SQLite inside ``data_dir``.
        api_key: the caller's key for stdio and CLI calls.
    """

    data_dir: Path = field(default_factory=lambda: Path(".scalemule"))
    database_url: str | None = None
    api_key: str | None = None
    secret_versions_kept: int = 10

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read ``SCALEMULE_*`` variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        return cls(
            data_dir=Path(env.get("SCALEMULE_DATA_DIR") or ".scalemule"),
            database_url=env.get("SCALEMULE_DATABASE_URL") or None,
            api_key=env.get("SCALEMULE_API_KEY") or None,
            secret_versions_kept=int(env.get("SCALEMULE_SECRET_VERSIONS_KEPT") or 10),
        )

    @property
    def url(self) -> str:
        """The database URL in force: the configured one, else the embedded SQLite file."""
        return self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / 'scalemule.db').resolve()}"
