"""Background checkpoints of the local ledger's files (:data:`_CHECKPOINTER`), off the
transactions' path."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Final

# the logger of the package, named in docs/architecture.md, not of this module
logger = logging.getLogger("dtp.ledger.local")


class _Checkpointer:
    """Checkpoints of file ledgers, off the transactions' path.

    In WAL mode SQLite checkpoints from the connection whose commit takes the WAL past
    ``wal_autocheckpoint`` pages: that commit then waits for the copy into the database
    and two fsyncs, often milliseconds, where a transaction otherwise takes a fraction of
    one. Here every :data:`_CHECKPOINT_EVERY` commits of a ledger handle start a short
    thread that runs a PASSIVE checkpoint on a connection of its own (SQLite leaves the
    GIL while it copies and syncs; PASSIVE neither waits for nor blocks readers and
    writers); at most one at a time per file. SQLite's own checkpoint still restarts the
    WAL, but only every :data:`_WAL_AUTOCHECKPOINT_PAGES` pages, and finds little left to
    copy by then.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        # ledger files by real path: handles reaching one file through different
        # spellings (a relative path, a symlink, "x/../") share its checkpoints
        self._running: set[str] = set()

    def forked(self) -> None:
        """In the child of fork(): the parent's checkpoint threads are not there, and one
        may have held the lock or left its path marked as running."""
        self._lock = threading.Condition()
        self._running = set()

    def wait(self, path: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a checkpoint of ``path`` (a real path, as
        :func:`os.path.realpath` gives) still running to end; whether none is running now."""
        with self._lock:
            return self._lock.wait_for(lambda: path not in self._running, timeout)

    def request(self, path: str) -> None:
        """Start a checkpoint of ``path`` (a real path) unless one is running."""
        with self._lock:
            if path in self._running:
                return
            self._running.add(path)
        threading.Thread(target=self._run, args=(path,), name="dtp-checkpoint", daemon=True).start()

    def _run(self, path: str) -> None:
        try:
            # mode=rw: a file removed meanwhile is not created again
            uri = Path(path).absolute().as_uri() + "?mode=rw"
            db = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
            try:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                db.close()
        except sqlite3.Error as exc:  # busy or gone: a later request tries again
            logger.debug("checkpoint of %s skipped: %s", path, exc)
        finally:
            with self._lock:
                self._running.discard(path)
                self._lock.notify_all()


_CHECKPOINTER: Final = _Checkpointer()
#: Commits of one ledger handle between two background checkpoints.
_CHECKPOINT_EVERY: Final = 64
#: SQLite's own checkpoint threshold (pages), a bound should the background ones lag.
_WAL_AUTOCHECKPOINT_PAGES: Final = 8000
