"""The durable book of a client's ledger connections until each is settled: an SQLite
file (or memory) in which a connection is written before its deposit can move -- its
spending cap first, its ID as soon as the ledger tells it -- so that a process that
stops, however it stops, leaves every deposit it put in escrow findable by the next
(docs/escrow.md §7.1). :mod:`dtp.payments._refunds` keeps it; the services daemon's
is ``<state_dir>/connections.sqlite`` (docs/daemon.md, "Tunnels").

The file's failures are :class:`sqlite3.Error`, raised to the caller: a record that
fails before an open stops the open, which is the point of writing first.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dtp.errors import DTPError
from dtp.identity._files import write_durably
from dtp.ledger._objects import normalize_id

__all__ = ["BOOK_VERSION", "Opened", "OpenedBook"]

BOOK_VERSION: Final = 2
"""The file's ``PRAGMA user_version``: 0, the first daemon book (taken up as found); 2,
this one (the ``unserved`` column added as opened where missing)."""

_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Opened:
    """One connection of the book."""

    key: int
    """The book's own name for the entry (its row)."""
    cap_id: str | None
    """The spending cap made for it, known before the open; None for a connection
    handed over by its ID alone (:meth:`~dtp.payments._refunds.RefundCollector.add`)."""
    connection_id: str | None
    """None until the ledger told it (an open recorded before it landed)."""
    label: str
    """Who opened it, for the logs (the daemon's forward; empty for an SDK client's)."""
    recorded_at: float
    """When it was first recorded (Unix time)."""
    due_ms: int | None = None
    """The ledger time from which its client may settle it alone, once read (None:
    not known yet: still Open, or not looked at)."""
    unserved: bool = False
    """Recorded as not served (yet), so its client may connect on it again instead of
    opening another (docs/daemon.md, "Tunnels")."""

    @property
    def ids(self) -> tuple[str, ...]:
        """The IDs it is known by (its cap's, its own)."""
        return tuple(i for i in (self.cap_id, self.connection_id) if i is not None)

    @property
    def name(self) -> str:
        """Its connection ID, else its spending cap's (for the logs)."""
        return self.connection_id or self.cap_id or "?"


# ``forward`` holds the label: the first book's column, kept under its name so that a
# daemon of the first book's version still reads a file this one wrote
_SCHEMA = """
CREATE TABLE opened (
    cap_id TEXT UNIQUE,
    connection_id TEXT UNIQUE,
    forward TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    due_ms INTEGER,
    unserved INTEGER NOT NULL DEFAULT 0,
    CHECK (cap_id IS NOT NULL OR connection_id IS NOT NULL)
)
"""
_COLUMNS = "rowid, cap_id, connection_id, forward, recorded_at, due_ms, unserved"


class OpenedBook:
    """The connections recorded and not known settled, oldest first: with a ``path``,
    a file made by the first record, every write synced; else in memory. Thread-safe.
    An older file (the first daemon book, the collector's JSON) is taken up as found."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._closed = False
        if self.path is None or self.path.exists():
            with self._lock:
                self._open()

    def _open(self) -> sqlite3.Connection:
        """The book, opened (made) now if it was not (lock held)."""
        if self._closed:
            raise sqlite3.ProgrammingError(f"the book {self.path or '(memory)'} is closed")
        if self._db is None:
            if self.path is not None:
                _convert_json(self.path)
            where = ":memory:" if self.path is None else str(self.path)
            db = sqlite3.connect(where, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA synchronous = FULL")  # written means on disk
                _take_up(db, self.path)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    # -- writes ----------------------------------------------------------------------------

    def record(
        self,
        cap_id: str | None,
        connection_id: str | None,
        label: str = "",
        due_ms: int | None = None,
        *,
        unserved: bool = False,
    ) -> Opened:
        """Write a connection: a new entry, or what the entry of its cap or its ID did
        not know yet (a known ID, cap or time stays). ``unserved``: a new entry's
        :attr:`Opened.unserved` (until :meth:`served`). Returns the entry as written."""
        if cap_id is None and connection_id is None:
            raise ValueError("a connection is recorded by its spending cap or its ID")
        with self._lock:
            db = self._open()
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM opened WHERE cap_id = ? OR connection_id = ? "
                    "ORDER BY rowid",
                    (cap_id, connection_id),
                ).fetchall()
                if not rows:
                    cursor = db.execute(
                        "INSERT INTO opened (cap_id, connection_id, forward, recorded_at, "
                        "due_ms, unserved) VALUES (?, ?, ?, ?, ?, ?)",
                        (cap_id, connection_id, label, time.time(), due_ms, int(unserved)),
                    )
                    key = cursor.lastrowid
                else:
                    # (two entries, one by cap and one by ID, are the same connection
                    # told twice: merged into the older)
                    key = rows[0][0]
                    for row in rows[1:]:
                        cap_id = cap_id or row[1]
                        connection_id = connection_id or row[2]
                        db.execute("DELETE FROM opened WHERE rowid = ?", (row[0],))
                    db.execute(
                        "UPDATE opened SET cap_id = COALESCE(cap_id, ?), "
                        "connection_id = COALESCE(connection_id, ?), "
                        "due_ms = COALESCE(?, due_ms), "
                        "forward = CASE WHEN forward = '' THEN ? ELSE forward END "
                        "WHERE rowid = ?",
                        (cap_id, connection_id, due_ms, label, key),
                    )
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM opened WHERE rowid = ?", (key,)
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return _entry(row)

    def set_due(self, entry: Opened, due_ms: int | None) -> None:
        """Note when ``entry``'s client may settle it (None: to be read again)."""
        with self._lock:
            if self._db is not None:
                self._db.execute(
                    "UPDATE opened SET due_ms = ? WHERE rowid = ?", (due_ms, entry.key)
                )

    def served(self, some_id: str) -> None:
        """The connection of this spending cap or ID carried a DTP connection: no longer
        :attr:`Opened.unserved`."""
        with self._lock:
            if self._db is not None:
                self._db.execute(
                    "UPDATE opened SET unserved = 0 WHERE cap_id = ? OR connection_id = ?",
                    (some_id, some_id),
                )

    def forget(self, entry: Opened) -> None:
        """Remove ``entry`` -- unless it learnt its connection's ID since it was read:
        an open that landed meanwhile is kept for the next look."""
        with self._lock:
            if self._db is not None:
                self._db.execute(
                    "DELETE FROM opened WHERE rowid = ? AND connection_id IS ?",
                    (entry.key, entry.connection_id),
                )

    # -- reads -----------------------------------------------------------------------------

    def entries(self) -> list[Opened]:
        """Every connection of the book, oldest first."""
        with self._lock:
            if self._db is None:
                return []
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM opened ORDER BY recorded_at, rowid"
            ).fetchall()
        return [_entry(r) for r in rows]

    def find(self, some_id: str) -> Opened | None:
        """The entry of a spending cap or connection ID (None: not in the book)."""
        with self._lock:
            if self._db is None:
                return None
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM opened WHERE cap_id = ? OR connection_id = ?",
                (some_id, some_id),
            ).fetchone()
        return None if row is None else _entry(row)

    def __len__(self) -> int:
        with self._lock:
            if self._db is None:
                return 0
            (count,) = self._db.execute("SELECT COUNT(*) FROM opened").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the book's SQLite file (idempotent); a write after it raises
        ``sqlite3.ProgrammingError``."""
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> OpenedBook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _entry(row: tuple[object, ...]) -> Opened:
    key, cap, cid, label, at, due, unserved = row
    return Opened(
        int(key),  # type: ignore[call-overload]
        None if cap is None else str(cap),
        None if cid is None else str(cid),
        str(label),
        float(at),  # type: ignore[arg-type]
        None if due is None else int(due),  # type: ignore[call-overload]
        bool(unserved),
    )


def _take_up(db: sqlite3.Connection, path: Path | None) -> None:
    """Make the table, or bring a first daemon book's up to this version (one
    transaction: a crash leaves the old table whole), or add the ``unserved`` column
    to a book of this version made before it."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version == BOOK_VERSION:
        columns = {row[1] for row in db.execute("PRAGMA table_info(opened)")}
        if "unserved" not in columns:
            db.execute("ALTER TABLE opened ADD COLUMN unserved INTEGER NOT NULL DEFAULT 0")
        return
    if version > BOOK_VERSION:
        raise sqlite3.DatabaseError(
            f"{path} is a book of connections of a newer version ({version}) than this "
            f"one reads ({BOOK_VERSION})"
        )
    db.execute("BEGIN IMMEDIATE")
    try:
        old = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'opened'"
        ).fetchone()
        if old is not None:
            db.execute("ALTER TABLE opened RENAME TO opened_v1")
        db.execute(_SCHEMA)
        if old is not None:
            db.execute(
                "INSERT INTO opened (cap_id, connection_id, forward, recorded_at) "
                "SELECT cap_id, connection_id, forward, recorded_at FROM opened_v1"
            )
            db.execute("DROP TABLE opened_v1")
        db.execute(f"PRAGMA user_version = {BOOK_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _convert_json(path: Path) -> None:
    """Replace the refund collector's first file (JSON: connection ID -> due ms, or
    null) with a book holding the same connections. Any other file is left to SQLite,
    which opens a book and refuses the rest."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
            if head == _SQLITE_MAGIC or not head.lstrip().startswith(b"{"):
                return
            data = json.loads(head + f.read())
    except (OSError, ValueError):
        return  # (not JSON after all: SQLite says what it is)
    if not isinstance(data, dict):
        return
    db = sqlite3.connect(":memory:")
    try:
        db.execute(_SCHEMA)
        db.execute(f"PRAGMA user_version = {BOOK_VERSION}")
        now = time.time()
        for key, due in data.items():
            try:
                cid = normalize_id(key, "connection ID")
            except DTPError:
                continue
            due_ms = due if isinstance(due, int) and not isinstance(due, bool) else None
            db.execute(
                "INSERT OR IGNORE INTO opened (connection_id, forward, recorded_at, due_ms) "
                "VALUES (?, '', ?, ?)",
                (cid, now, due_ms),
            )
        db.commit()
        image = db.serialize()
    finally:
        db.close()
    write_durably(path, image)
