"""SQLite persistence of a graph: docs/graph.md, "Persistence", says the log, its
flushes and compactions, ``meta`` and the one-graph-per-file lock.

The HAM table in memory (C) is the working set; SQLite keeps its ``changed`` batches as
a log, whose replay rebuilds the same table (merge is commutative, associative and
idempotent) at one C merge per row, no per-field Python work. The log is measured in
bytes, not rows: counting rows against a count reset at each open let a peer's stream
of tiny DATA messages rewrite a large table every few thousand of them. A file of format
1 is migrated by :mod:`dtp.graph._formats`; ``sync_refusal`` is
:mod:`dtp.graph._reported`'s.

Failures of the file raise :class:`GraphStorageError`, never ``sqlite3``'s own; a failed
flush keeps its batches for the next one. :class:`IdleFlusher` flushes a buffer no later
write comes to flush: else the last writes before an idle period would wait for
``close()``, and a crash would lose them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from dtp.errors import LocalProtocolError
from dtp.graph._batch import batch_count
from dtp.identity._files import companion, lock_exclusive
from dtp.native.reference._limits import HAM_BATCH_HEADER_LEN, HAM_BATCH_VERSION

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY AUTOINCREMENT, batch BLOB NOT NULL);
"""
_GRAPH_TABLES = frozenset(
    {"meta", "log", "sqlite_sequence", "query_link", "query_value", "sync_refusal"}
)
#: The columns of our tables, as ``PRAGMA table_info`` gives them (name, declared type,
#: not null, primary key): a table of that name laid out otherwise is another
#: application's, and so is its file.
_COLUMNS: dict[str, list[tuple[str, str, int, int]]] = {
    "meta": [("key", "TEXT", 0, 1), ("value", "BLOB", 1, 0)],
    "log": [("seq", "INTEGER", 0, 1), ("batch", "BLOB", 1, 0)],
    "sync_refusal": [
        ("peer", "BLOB", 1, 1),
        ("soul", "BLOB", 1, 2),
        ("field", "BLOB", 1, 3),
        ("state", "REAL", 1, 0),
    ],
}
#: The refusals described to sync peers (dtp.graph._reported), made by the first one.
_REFUSALS_SCHEMA = """
CREATE TABLE IF NOT EXISTS sync_refusal (
    peer BLOB NOT NULL, soul BLOB NOT NULL, field BLOB NOT NULL, state REAL NOT NULL,
    PRIMARY KEY (peer, soul, field)
)"""
FORMAT = 2
"""The format of the graph files this version writes: 2 holds values in Gun's text and
its log's batches are of HAM batch version 2 (ties in UTF-16 order); 1 (no ``format`` in
``meta``) held them in the canonical JSON of Python and compared them bytewise."""
_F64 = struct.Struct("<d")
_HEADER = struct.Struct("<BI")  # a HAM batch's version and update count (protocol.md 6.1)

#: A flush of at most this many batches writes a row each (packing a few saves nothing);
#: a larger one -- a burst of small merges -- packs them.
_PACK_FROM = 16
#: Packed rows stay below this (a larger batch keeps a row of its own): each row is read
#: and merged whole when the file is opened.
_ROW_MAX = 1 << 20
#: What a log row weighs, beyond its bytes, when the log is measured against the table:
#: replaying a row costs about as much as merging 1 KiB (one SQLite step and one merge
#: call, ~2.5 us, against ~2 ms per MiB merged).
_ROW_BYTES = 1024
#: The log is compacted once it weighs more than twice the table and this much more: a
#: compaction rewrites the table, and is paid for by at least as much log weight (its
#: bytes, and 1 KiB a row; a burst of small batches is packed into a row): never a whole
#: table for a few KiB of small batches.
_COMPACT_FLOOR = 64 << 10
#: The -wal file is cut back to this size when SQLite resets it: a compaction's one
#: transaction grows it to the table's size, and SQLite otherwise keeps a WAL file at
#: the largest size it ever reached.
_WAL_LIMIT = 8 << 20


def table_layout(db: sqlite3.Connection, table: str) -> list[tuple[str, str, int, int]]:
    """A table's columns as ``PRAGMA table_info`` gives them: (name, declared type, not
    null, primary key); none for a table that does not exist."""
    return [
        (name, decl.upper(), notnull, pk)
        for _cid, name, decl, notnull, _default, pk in db.execute(f"PRAGMA table_info({table})")
    ]


class StorageTables(Protocol):
    """Tables kept in a graph's file beside its log and written in the same transactions
    (the query index, :mod:`dtp.graph._query_index`): the file never holds the log's
    rows without theirs."""

    @property
    def pending(self) -> bool:
        """Changes are queued for the next write."""

    def write(self, db: sqlite3.Connection) -> None:
        """Write them, inside the transaction that writes the log."""

    def committed(self) -> None:
        """That transaction is committed."""


class GraphStorageError(LocalProtocolError):
    """The graph's SQLite file cannot be opened, read or written (not a graph database,
    corrupt, already open in another graph, disk full, I/O error)."""


class GraphStorage:
    """The SQLite file behind a :class:`~dtp.graph.Graph`.

    ``flush_rows`` / ``flush_bytes`` / ``flush_interval``: :meth:`append` reports a flush
    due once that many batches, bytes or seconds have accumulated (the graph also
    flushes on ``flush()`` / ``close()``, and an :class:`IdleFlusher` when no later write
    comes). Not thread-safe by itself: the graph holds its lock around every call.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_rows: int = 1024,
        flush_bytes: int = 8 << 20,
        flush_interval: float = 0.25,
    ) -> None:
        self.path = Path(path)
        self._unlock: weakref.finalize[[int], GraphStorage] | None = None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, ValueError) as exc:  # ValueError: a NUL or lone surrogate
            raise _open_error(self.path, exc) from exc
        try:
            links = 1 if str(self.path) == ":memory:" else os.stat(self.path).st_nlink
            if links > 1:
                # the lock is found by name (<path>-lock), and so are SQLite's -wal and
                # -shm files: under a second name the file got a graph of its own beside
                # one open under the first, each reading and writing its own -wal
                # (writes lost, the file corrupted: sqlite.org/howtocorrupt.html 2.5)
                raise GraphStorageError(
                    f"graph database {str(self.path)!r} has {links} names (hard links): "
                    "SQLite and the graph's lock need it to have one"
                )
            # another application's database must be refused before anything is written
            # to it (the WAL switch and the schema below both change the file)
            tables = {
                name
                for (name,) in self._db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
            foreign = tables - _GRAPH_TABLES
            if foreign:
                # (reported as every other file that is not ours: "cannot open ...")
                raise sqlite3.DatabaseError(
                    f"not a graph database (it has the tables {', '.join(sorted(foreign))[:200]})"
                )
            for table in sorted(tables & _COLUMNS.keys()):
                # (an application's own "log" table passed the names alone: the file was
                # switched to WAL and given a meta table before anything refused it)
                if table_layout(self._db, table) != _COLUMNS[table]:
                    raise sqlite3.DatabaseError(
                        f"not a graph database (its table {table!r} is laid out otherwise)"
                    )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            self._db.executescript(_SCHEMA)
            # locked once the file is known to be a database (a text file or a directory
            # given by mistake gets no lock file beside it), before anything is read
            fd = _lock(self.path)
            if fd is not None:
                # a storage dropped without close() (its graph collected unclosed) must
                # not keep the file locked for the rest of the process
                self._unlock = weakref.finalize(self, os.close, fd)
            # a file SQLite can only read (read-only, or on a read-only mount) opens and
            # reads fine, and only the first flush would fail -- and then close() too,
            # leaving the graph open: find out now, with a write that changes nothing
            self._db.execute("UPDATE meta SET value = value WHERE key = 'clock'")
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(batch)), 0) FROM log")
            rows, size = row.fetchone()
            base = self.get_meta("compacted_bytes")
            self._compacted_bytes = int(base.decode()) if base else 0
            self.format = self._format(int(rows))
        except (sqlite3.Error, ValueError, OSError, GraphStorageError) as exc:
            # not a database, not ours, or open in another graph
            self.close()
            if isinstance(exc, GraphStorageError):
                raise
            raise _open_error(self.path, exc) from exc
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_rows = flush_rows
        self._flush_bytes = flush_bytes
        self._flush_interval = flush_interval
        self._last_flush = time.monotonic()
        self.log_rows: int = int(rows)
        self.log_bytes: int = int(size)
        self.flushes = 0
        self.compactions = 0
        #: tables written with the log (the query index), once a graph has them
        self.tables: StorageTables | None = None

    # -- meta -------------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        """One value of the ``meta`` table."""
        with self._errors("read"):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        if type(row[0]) is not bytes:
            # (TEXT written by another tool, say the sqlite3 shell: bytes() of it was a
            # TypeError out of Graph(path))
            raise self._corrupt(f"meta value {key!r} is not a blob")
        return row[0]

    def set_meta(self, key: str, value: bytes) -> None:
        """Write one ``meta`` value at once (outside the buffered log)."""
        with self._errors("write"):
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction on the file (GraphStorageError if it fails; rolled back
        whole)."""
        with self._errors("write"), self._transaction():
            yield

    @property
    def connection(self) -> sqlite3.Connection:
        """The file's SQLite connection (used with the graph's lock held)."""
        return self._db

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """sqlite3's exceptions as GraphStorageError."""
        try:
            yield
        except sqlite3.Error as exc:
            raise GraphStorageError(
                f"cannot {what} graph database {str(self.path)!r}: {exc}"
            ) from exc

    def _format(self, rows: int) -> int:
        """The file's format: :data:`FORMAT` for a new file (written now), 1 for a file
        written before formats were recorded; GraphStorageError for a later one."""
        raw = self.get_meta("format")
        if raw is None:
            if rows == 0 and self.get_meta("replica_id") is None:
                self.set_meta("format", str(FORMAT).encode())
                return FORMAT
            return 1
        if not raw.isdigit() or int(raw) < 2:
            raise self._corrupt(f"format {raw[:16]!r} is not a format number")
        if int(raw) > FORMAT:
            raise GraphStorageError(
                f"graph database {str(self.path)!r} is of format {int(raw)}, written by a "
                f"later version of dtp: this one reads format {FORMAT} (and migrates 1)"
            )
        return FORMAT

    def replica_id(self) -> bytes:
        """This file's random 16-byte replica id (created on first use)."""
        rid = self.get_meta("replica_id")
        if rid is None:
            rid = os.urandom(16)
            self.set_meta("replica_id", rid)
        elif len(rid) != 16:
            # (HELLO carries it: every peer would refuse every session, obscurely)
            raise self._corrupt(f"replica id of {len(rid)} bytes, not 16")
        return rid

    def clock_last(self) -> float:
        """The last state issued before the previous shutdown (0.0 for a new file)."""
        return self._clock_meta("clock")

    def clock_reserved(self) -> float:
        """The highest state the clock may have issued (see :meth:`reserve_clock`; 0.0
        when none was reserved)."""
        return self._clock_meta("clock_reserved")

    def reserve_clock(self, state: float) -> None:
        """Record at once, outside the buffered log, that states up to ``state`` may be
        issued: a write's state leaves the process (returned, sent to sync peers)
        before its batch is flushed, and a restart after a crash must count on from
        above it even with the wall clock behind. Synced to the disk (the log's commits
        are not, synchronous=NORMAL: they survive a process crash, not a power loss, and
        a reservation lost with them let a restart issue states below ones its peers
        already hold -- its new writes then lost to older values). At most one sync per
        reservation step of the clock (the graph reserves 250 ms of states at a time)."""
        with self._errors("write"):
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    ("clock_reserved", _F64.pack(state)),
                )
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def _clock_meta(self, key: str) -> float:
        raw = self.get_meta(key)
        if raw is None:
            return 0.0
        last = _F64.unpack(raw)[0] if len(raw) == 8 else math.nan
        if not math.isfinite(last):
            # (an infinite clock would make every later state infinite: no write could
            # ever be made again)
            raise self._corrupt("the stored clock is not a finite number")
        return float(last)

    def _corrupt(self, what: str) -> GraphStorageError:
        return GraphStorageError(f"graph database {str(self.path)!r} is corrupt: {what}")

    # -- the refusals described to sync peers (dtp.graph._reported) ------------------------

    def refusals_reported(self) -> list[tuple[bytes, bytes, bytes, float]]:
        """(peer, soul, field, state) of each refusal remembered, oldest first. Rows of
        other types (another tool's) are left out: forgetting one only describes it
        again."""
        with self._errors("read"):
            if not self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sync_refusal'"
            ).fetchone():
                return []
            rows = self._db.execute(
                "SELECT peer, soul, field, state FROM sync_refusal ORDER BY rowid"
            ).fetchall()
        return [
            (peer, soul, field, state)
            for peer, soul, field, state in rows
            if type(peer) is bytes
            and type(soul) is bytes
            and type(field) is bytes
            and type(state) is float
        ]

    def remember_refusals(
        self,
        rows: list[tuple[bytes, bytes, bytes, float]],
        forget: list[tuple[bytes, bytes, bytes]],
    ) -> None:
        """Remember ``rows`` (peer, soul, field, state; one a field and peer, the newest
        replacing and going last) and forget ``forget`` (peer, soul, field), in one
        transaction."""
        with self._errors("write"), self._transaction():
            self._db.execute(_REFUSALS_SCHEMA)
            self._db.executemany(
                "DELETE FROM sync_refusal WHERE peer = ? AND soul = ? AND field = ?", forget
            )
            self._db.executemany("INSERT OR REPLACE INTO sync_refusal VALUES (?, ?, ?, ?)", rows)

    # -- the log ----------------------------------------------------------------------------

    def load(self) -> Iterator[bytes]:
        """The stored batches, oldest first (GraphStorageError for a corrupt page: the
        rows are read as they are replayed, past the checks made at open)."""
        with self._errors("read"):
            for (batch,) in self._db.execute("SELECT batch FROM log ORDER BY seq"):
                if type(batch) is not bytes:
                    # (NULL from a file cut short mid-page, TEXT from another tool): a
                    # corrupt file's typed error, not bytes()'s TypeError
                    raise self._corrupt("a log entry is not a blob")
                yield batch

    def append(self, batch: bytes) -> bool:
        """Buffer one changed batch; True when a flush is due."""
        self._pending.append(batch)
        self._pending_bytes += len(batch)
        return (
            len(self._pending) >= self._flush_rows
            or self._pending_bytes >= self._flush_bytes
            or time.monotonic() - self._last_flush >= self._flush_interval
        )

    @property
    def pending(self) -> int:
        """Batches buffered and not yet written."""
        return len(self._pending)

    def flush(self, clock_last: float) -> None:
        """Write the buffered batches and the clock in one transaction."""
        self._last_flush = time.monotonic()
        tables = self.tables
        if not self._pending and (tables is None or not tables.pending):
            return
        rows = _rows(self._pending)
        size = sum(len(row) for (row,) in rows)
        with self._errors("write"), self._transaction():
            self._db.executemany("INSERT INTO log (batch) VALUES (?)", rows)
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('clock', ?)", (_F64.pack(clock_last),)
            )
            if tables is not None:
                tables.write(self._db)
        if tables is not None:
            tables.committed()
        # cleared only once committed: a failed transaction (disk full, locked file)
        # keeps the batches for the next flush instead of dropping them
        self._pending, self._pending_bytes = [], 0
        self.log_rows += len(rows)
        self.log_bytes += size
        self.flushes += 1

    def should_compact(self) -> bool:
        """True when the log holds much more than the table would (old versions, many
        small rows): its bytes, each row weighing ``_ROW_BYTES`` more, exceed twice the
        table's size at the last compaction by ``_COMPACT_FLOOR``.

        Against the table's size, not a fixed number of rows: a compaction rewrites the
        whole table, and a row count reached by a few thousand tiny batches made a peer
        able to force a rewrite of a large table for every few KiB it sent."""
        weight = self.log_bytes + _ROW_BYTES * self.log_rows
        return weight > 2 * self._compacted_bytes + _COMPACT_FLOOR

    def compact(
        self, batches: Iterable[bytes], clock_last: float, *, migrated: bool = False
    ) -> None:
        """Replace the log by ``batches`` (the table's export), atomically; buffered
        writes are dropped, since the export already holds them. ``migrated``: the
        batches are the table of a file of an earlier format, migrated, and the file is
        of :data:`FORMAT` once they are written (in the same transaction)."""
        rows = [(b,) for b in batches]
        size = sum(len(b) for (b,) in rows)
        with self._errors("write"), self._transaction():
            if migrated:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(FORMAT).encode(),)
                )
            self._db.execute("DELETE FROM log")
            self._db.executemany("INSERT INTO log (batch) VALUES (?)", rows)
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('compacted_bytes', ?)",
                (str(size).encode(),),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('clock', ?)", (_F64.pack(clock_last),)
            )
            if self.tables is not None:
                # (the export holds the buffered changes: so must the tables)
                self.tables.write(self._db)
        if self.tables is not None:
            self.tables.committed()
        # cleared only once committed (as in flush): a failed compaction keeps them
        self._pending, self._pending_bytes = [], 0
        self.log_rows, self.log_bytes = len(rows), size
        self._compacted_bytes = size
        self._last_flush = time.monotonic()
        self.compactions += 1
        if migrated:
            self.format = FORMAT

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        """Close the file and release its lock (the caller flushes first; idempotent)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        if self._unlock is not None:
            self._unlock()  # closes the lock's descriptor, which releases the flock (once)


def _rows(batches: list[bytes]) -> list[tuple[bytes]]:
    """The log rows that store ``batches``, in order: a row each when they are few
    (``_PACK_FROM``), else consecutive batches joined into one batch of at most
    ``_ROW_MAX`` bytes (a larger batch stays alone).

    A joined batch is the updates of its batches, in order, under one header: merge
    takes a batch's updates one at a time, so replaying it is replaying them one after
    the other; and the log is replayed with the clock past every state, so none is
    deferred. Each row costs one SQLite step and one merge at open, and weighs as much
    in :meth:`GraphStorage.should_compact`: a burst of one-update batches (a peer's
    stream of tiny DATA messages) takes a few rows, not one each."""
    if len(batches) <= _PACK_FROM:
        return [(batch,) for batch in batches]
    rows: list[tuple[bytes]] = []
    group: list[bytes] = []
    size = count = 0
    for batch in batches:
        body = len(batch) - HAM_BATCH_HEADER_LEN
        if group and size + body > _ROW_MAX - HAM_BATCH_HEADER_LEN:
            rows.append(_joined(group, count))
            group, size, count = [], 0, 0
        group.append(batch)
        size += body
        count += batch_count(batch)
    if group:
        rows.append(_joined(group, count))
    return rows


def _joined(batches: list[bytes], count: int) -> tuple[bytes]:
    """One canonical batch of the updates of ``batches`` (``count`` in all), as a row."""
    if len(batches) == 1:
        return (batches[0],)
    header = _HEADER.pack(HAM_BATCH_VERSION, count)
    return (header + b"".join(memoryview(b)[HAM_BATCH_HEADER_LEN:] for b in batches),)


def _open_error(path: Path, exc: Exception) -> GraphStorageError:
    return GraphStorageError(f"cannot open graph database {str(path)!r}: {exc}")


def _lock(path: Path) -> int | None:
    """Take the exclusive lock of ``<path>-lock`` (GraphStorageError if another graph
    holds it); returns the descriptor holding it."""
    if str(path) == ":memory:":  # (SQLite's name for no file at all)
        return None
    try:
        return lock_exclusive(companion(path))
    except BlockingIOError:
        raise GraphStorageError(
            f"graph database {str(path)!r} is already open in another graph "
            "(this process or another): one file holds one graph at a time. To share "
            "it, open a file of your own and sync with that graph (docs/graph.md, 'Sync "
            "protocol': connect() to its GraphServer, or to python -m dtp.graph gun --sync)"
        ) from None


class IdleFlusher:
    """A thread that calls ``flush`` once a buffered write is ``interval`` seconds old.

    :meth:`arm` after every buffered write; arming an armed flusher changes nothing, so
    the oldest buffered write sets the deadline. ``flush`` is held through a
    :class:`weakref.WeakMethod` so that the thread does not keep an unclosed graph
    alive; the thread ends on :meth:`close` or when the graph is gone. A failing flush
    is logged and retried one interval later (the storage keeps the batches).
    """

    def __init__(self, flush: weakref.WeakMethod[Callable[[], None]], interval: float) -> None:
        self._flush = flush
        self._interval = interval
        self._cond = threading.Condition()
        self._due: float | None = None  # monotonic deadline; None while nothing is buffered
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dtp-graph-flusher", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        """A write was buffered: flush it within the interval."""
        with self._cond:
            if self._due is None and not self._closed:
                self._due = time.monotonic() + self._interval
                self._cond.notify()

    def _wait_due(self) -> bool:
        """Block until the deadline passes (True) or the flusher is closed (False)."""
        with self._cond:
            while not self._closed:
                if self._due is None:
                    self._cond.wait()
                    continue
                remaining = self._due - time.monotonic()
                if remaining <= 0:
                    self._due = None
                    return True
                self._cond.wait(remaining)
            return False

    def _run(self) -> None:
        while self._wait_due():
            flush = self._flush()
            if flush is None:
                return
            try:
                flush()
            except Exception:  # a daemon thread has nobody to raise to
                logger.exception("graph: flushing buffered writes to SQLite failed; retrying")
                self.arm()
            del flush  # do not hold the graph while waiting

    def close(self, *, join: bool = True) -> None:
        """Stop the thread and, with ``join``, wait for it (idempotent; the caller
        flushes)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if join and threading.current_thread() is not self._thread:
            self._thread.join()


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                # a failed COMMIT (busy, I/O error) leaves the transaction open: end it,
                # or every later BEGIN would fail too
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
        else:
            # (after some errors, SQLITE_FULL say, SQLite has already rolled back: a
            # failing ROLLBACK must not hide the error that made it necessary)
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")


__all__ = ["FORMAT", "GraphStorage", "GraphStorageError", "IdleFlusher", "StorageTables"]
