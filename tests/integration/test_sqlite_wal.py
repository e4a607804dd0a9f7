"""SQLite's write-ahead log is checkpointed by the Checkpointer thread, not by the commits of calls.

SQLite only: PostgreSQL has no write-ahead log for the server to manage.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from scalemule.db import wal
from scalemule.db.engine import Database

pytestmark = pytest.mark.anyio

_note = sa.text("CREATE TABLE IF NOT EXISTS notes (n INTEGER PRIMARY KEY, body TEXT)")
_insert = sa.text("INSERT INTO notes (body) VALUES (:body)")


async def _write(db: Database, rows: int) -> None:
    for n in range(rows):
        async with db.transaction() as conn:
            await conn.execute(_note)
            await conn.execute(_insert, {"body": "x" * 2000 + str(n)})


def _passes(checkpointer: wal.Checkpointer, monkeypatch: pytest.MonkeyPatch, *, failing: list[bool]) -> Any:
    """Hand each pass the thread makes (None: it failed) to the test, failing while ``failing[0]``."""
    made: queue.Queue[wal.Pass | None] = queue.Queue()
    real = checkpointer._checkpoint

    class Failing:
        def execute(self, sql: str) -> None:
            raise sqlite3.OperationalError("disk I/O error")

    def checkpoint(conn: sqlite3.Connection) -> None:
        passes = checkpointer.passes
        real(Failing() if failing[0] else conn)  # type: ignore[arg-type]
        made.put(checkpointer.last if checkpointer.passes > passes else None)

    monkeypatch.setattr(checkpointer, "_checkpoint", checkpoint)

    async def next_pass() -> wal.Pass | None:
        return await anyio.to_thread.run_sync(made.get, True, 10)

    return next_pass


async def test_commits_leave_checkpoints_to_the_thread_which_copies_the_whole_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'store.db'}")
    assert db._checkpointer is not None
    next_pass = _passes(db._checkpointer, monkeypatch, failing=[False])
    try:
        await _write(db, 50)
        async with db.transaction() as conn:
            threshold = (await conn.execute(sa.text("PRAGMA wal_autocheckpoint"))).scalar_one()
        assert threshold == wal.BACKSTOP_PAGES, "the writer checkpoints only as a backstop"
        first = await next_pass()
        # No reader held an older snapshot: every frame of the log is now in the database file.
        assert first is not None and not first.busy and first.log_frames > 0
        assert first.checkpointed == first.log_frames
        await _write(db, 5)
        later = await next_pass()
        assert later is not None and later.checkpointed == later.log_frames
    finally:
        await db.dispose()
    assert db._checkpointer._thread is None, "dispose stops the thread"


async def test_a_checkpoint_that_fails_is_logged_and_the_next_commit_tries_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'store.db'}")
    assert db._checkpointer is not None
    failing = [True]
    next_pass = _passes(db._checkpointer, monkeypatch, failing=failing)
    try:
        await _write(db, 3)
        assert await next_pass() is None
        assert "checkpointing the SQLite write-ahead log failed" in caplog.text
        failing[0] = False
        await _write(db, 1)
        done = await next_pass()
        assert done is not None and done.checkpointed == done.log_frames
        async with db.transaction() as conn:
            assert (await conn.execute(sa.text("SELECT count(*) FROM notes"))).scalar_one() == 4
    finally:
        await db.dispose()


async def test_closing_does_not_wait_for_the_commits_the_thread_is_gathering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "GATHER_SECONDS", 3600.0)
    db = Database(f"sqlite:///{tmp_path / 'store.db'}")
    await _write(db, 1)
    checkpointer = db._checkpointer
    assert checkpointer is not None
    with anyio.fail_after(60):  # an hour if stopping waited for the gathering to end
        await db.dispose()
    assert checkpointer._thread is None and checkpointer.passes == 0


async def test_a_database_used_again_after_closing_checkpoints_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'store.db'}")
    assert db._checkpointer is not None
    next_pass = _passes(db._checkpointer, monkeypatch, failing=[False])
    await _write(db, 1)
    await db.dispose()
    try:
        await _write(db, 2)
        again = await next_pass()
        assert again is not None and again.checkpointed == again.log_frames
    finally:
        await db.dispose()


async def test_a_close_landing_between_the_gathering_and_its_clearing_still_stops_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "GATHER_SECONDS", 0.0)
    checkpointer = wal.Checkpointer(tmp_path / "store.db", 1000)
    landed = threading.Event()

    class CloseBeforeClear(threading.Event):
        def clear(self) -> None:
            if not landed.is_set():  # close() runs here: it sets _stop, then wakes the thread
                checkpointer._stop.set()
                self.set()
                landed.set()
            super().clear()

    checkpointer._wrote = CloseBeforeClear()
    checkpointer.wrote()
    thread = checkpointer._thread
    assert thread is not None and landed.wait(10)
    thread.join(timeout=10)  # a lost wake-up leaves it waiting for a commit forever
    assert not thread.is_alive()
