"""SQLite's write-ahead log, copied back into the database file on a thread of its own.

Every commit appends to the write-ahead log (WAL). By default SQLite makes the commit that takes the log
past 1,000 pages also copy it into the database file and sync that file (a checkpoint): on an audited
call that is tens of milliseconds, once in every hundred calls or so, inline on the event loop. The
server's writer connection instead leaves checkpoints to a ``Checkpointer`` thread, which runs a
passive one (it neither waits for nor blocks readers and writers) shortly after commits; the driver
releases the interpreter while SQLite works, so calls go on meanwhile. The writer keeps an automatic
threshold ten times SQLite's default only as a backstop, should the thread fall behind.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

# The writer connection's automatic checkpoint threshold, in pages (about 40 MB of log at 4 KiB).
BACKSTOP_PAGES = 10_000
# How long the thread lets commits gather before checkpointing them: one checkpoint per burst.
GATHER_SECONDS = 0.2

log = logging.getLogger("scalemule")


@dataclass(frozen=True)
class Pass:
    """One checkpoint's outcome (``PRAGMA wal_checkpoint``): whether another checkpoint held it off,
    the log's size in frames, and how many of them are now in the database file."""

    busy: bool
    log_frames: int
    checkpointed: int


class Checkpointer:
    """Checkpoints one SQLite file's WAL on a daemon thread, after the commits ``wrote`` reports."""

    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._wrote = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.last: Pass | None = None

    def wrote(self) -> None:
        """Note a commit (from the event loop's thread); the first one starts the thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="scalemule-wal-checkpoints", daemon=True)
            self._thread.start()
        self._wrote.set()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout_ms / 1000, isolation_level=None)
        try:
            while True:
                self._wrote.wait()
                # Stopping ends the wait at once: closing the last connection checkpoints anyway.
                if self._stop.wait(GATHER_SECONDS):
                    return
                self._wrote.clear()
                # A close that came after the gathering timed out and before the clear would have its
                # wake-up cleared here, and the thread would wait for a commit forever.
                if self._stop.is_set():
                    return
                self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            # The next commit tries again; the writer's backstop bounds the log meanwhile.
            log.warning("checkpointing the SQLite write-ahead log failed", exc_info=True)
            return
        self.last = Pass(bool(busy), int(frames), int(done))
        self.passes += 1

    def close(self) -> None:
        """Stop the thread, waiting for a checkpoint under way to end. A database used again after
        closing (its connection reopens) starts a new thread with its next commit."""
        self._stop.set()
        self._wrote.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._stop.clear()
        self._wrote.clear()
