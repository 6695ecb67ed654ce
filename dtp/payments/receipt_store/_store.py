"""The receipt store, :class:`ReceiptStore`: its SQLite handle (errors as
:class:`~dtp.errors.ReceiptStoreError` naming the file), its rows (a newer cumulative
receipt kept with a sync before the call returns; claims marked), and the servers
attached to it, each run's lock file telling the others its rows are a live run's
(:meth:`ReceiptStore.orphaned` recovers the dead ones'). The schema and statements are
:mod:`~dtp.payments.receipt_store._table`'s. The waits are bounded by
:data:`BUSY_TIMEOUT`, read here: set it on this module."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from dtp.errors import MalformedReceipt, ReceiptStoreError
from dtp.identity._files import make_private
from dtp.ledger._objects import normalize_id
from dtp.ledger.receipt import Receipt
from dtp.payments.receipt_store._table import (
    _COLUMNS,
    _KEEP,
    _MARK,
    _OLD_COLUMNS,
    _SCHEMA,
    _UNCLAIMED_OF_RUN,
    StoredReceipt,
    _now_ms,
    _stored,
    _u64_text,
)

try:
    import fcntl
except ImportError:  # (not POSIX: no lock; one live server per store is up to the caller)
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: The longest one store call waits for another writer's lock on the file (seconds)
#: before it raises :class:`ReceiptStoreError` ("database is locked").
BUSY_TIMEOUT = 30.0
#: A run lock file still under its making name this many seconds after it was made is
#: a dead server's (one is renamed within a moment of being made): removed when found.
STALE_NEWLOCK = 60.0
# A server run's ID (attach_server), as its lock file's name ends: nothing else found
# beside the store is taken for one.
_RUN_ID = re.compile(r"[0-9a-f]{16}")


class ReceiptStore:
    """Latest receipts per connection, persisted in a SQLite file (WAL mode)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._name = str(path)
        self._closed = False  # (set by close(), under the write lock)
        # one handle shared by a server's connection threads, serialized by SQLite's own
        # mutex (the default serialized threading mode); each call is one statement
        _create_private(self._name)
        with self._errors("open"):
            self._db = sqlite3.connect(
                self._name, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        try:
            with self._errors("open"):
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")  # a kept receipt survives power loss
                self._db.execute(_SCHEMA)
                self._check_schema()
                self._check_writable()
                if self._columns() == _OLD_COLUMNS:
                    self._migrate()
                self._retire_old_receipts()
        except BaseException:
            # (a file that is not a database fails here: the handle is not left open)
            self._db.close()
            raise
        # "claimed" marks are committed without a sync: one lost in a crash is marked
        # again by the next recovery (the ledger stops a double claim). Receipts keep
        # their sync. One handle does both (a second one's commits left reads here with
        # a stale snapshot); this lock keeps every keep out while it is NORMAL.
        self._write_lock = threading.Lock()
        # reads in progress (they take no write lock: WAL lets them run beside a write),
        # which close() waits for as it waits for the write
        self._reads = 0
        # (a read takes the lock itself: Condition's __enter__/__exit__ are Python calls)
        self._reads_lock = threading.RLock()
        self._reads_done = threading.Condition(self._reads_lock)
        # the live servers using this store (attach_server): those on this handle, and
        # the lock file that tells other handles and processes of them
        self._path = None if str(path) in ("", ":memory:") else Path(path)
        self._servers = 0
        self._server_fd: int | None = None
        self._server_lock = threading.Lock()
        # the run of the servers attached now (or last): the owner of the rows written,
        # and the lock file that tells other handles and processes it is live
        self._run_id: str | None = None
        self._run_fd: int | None = None
        self._run_path: Path | None = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: every call raises
        :class:`ReceiptStoreError` from then on, so a caller holding writes (the
        :class:`~dtp.payments._receipt_writer.ReceiptWriter`) stops trying them."""
        return self._closed

    def close(self) -> None:
        """Close the store once the reads and the write in progress are done (closed
        under a statement, CPython's sqlite3 can crash the process). Every call after it
        raises :class:`ReceiptStoreError` ("closed")."""
        with self._write_lock:
            with self._reads_done:
                self._closed = True
                self._reads_done.wait_for(lambda: self._reads == 0)
            with self._server_lock:
                self._servers = 0
                self._drop_server_lock()
            self._db.close()

    def __enter__(self) -> ReceiptStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the SQLite handle: errors named, the file checked and migrated, transactions ------

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """sqlite3's errors as :class:`ReceiptStoreError` naming the file (SQLite's own
        message, e.g. "database is locked", names none)."""
        try:
            yield
        except ReceiptStoreError:
            raise
        except sqlite3.Error as exc:
            raise self._error(doing, exc) from exc

    def _error(self, doing: str, exc: sqlite3.Error) -> ReceiptStoreError:
        """:meth:`_errors`' error for ``exc``."""
        error = ReceiptStoreError(
            f"cannot {doing} the receipt store {self._name}: {exc}", self._name
        )
        # (SQLite's code, e.g. SQLITE_BUSY, for callers that tell a lock from damage)
        for attr in ("sqlite_errorcode", "sqlite_errorname"):
            if hasattr(exc, attr):
                setattr(error, attr, getattr(exc, attr))
        return error

    def _check_schema(self) -> None:
        """Refuse a file whose ``receipts`` table another program made: opened, its every
        keep failed later ("no column named ..."), and a writer retried it for good
        while no receipt ever counted."""
        kind = self._db.execute("SELECT type FROM sqlite_master WHERE name = 'receipts'").fetchone()
        columns = self._columns()
        if kind is None or kind[0] != "table" or columns not in (_COLUMNS, _OLD_COLUMNS):
            raise ReceiptStoreError(
                f"cannot open the receipt store {self._name}: not a receipt store: its "
                "receipts table has columns "
                f"{columns} ({kind[0] if kind else 'none'}), not {_COLUMNS}",
                self._name,
            )

    def _columns(self) -> list[tuple[str, str]]:
        return [
            (str(row[1]), str(row[2]).upper())
            for row in self._db.execute("PRAGMA table_info(receipts)").fetchall()
        ]

    def _migrate(self) -> None:
        """Give a store made before run IDs its ``run_id`` column (its rows owned by no
        run). In one write transaction: two processes opening it at once do not both
        add it (the second finds it there)."""
        with self._transaction():
            if self._columns() == _OLD_COLUMNS:
                self._db.execute("ALTER TABLE receipts ADD COLUMN run_id TEXT NOT NULL DEFAULT ''")

    def _retire_old_receipts(self) -> None:
        """Rows of receipt format version 1 (docs/escrow.md §6), which this release
        cannot claim: dropped when fully claimed; should any still hold MIST unclaimed,
        the store is refused (:class:`ReceiptStoreError`) and left as it is, for the
        release that wrote them to claim -- ignored, they would be lost."""
        old = "substr(encoded, 1, 1) = x'01'"
        if self._db.execute(f"SELECT 1 FROM receipts WHERE {old} LIMIT 1").fetchone() is None:
            return
        with self._transaction():
            unclaimed = self._db.execute(
                f"SELECT connection_id, total_amount, claimed_amount FROM receipts WHERE {old} "
                "AND total_amount > claimed_amount ORDER BY connection_id"
            ).fetchall()
            if unclaimed:
                mist = sum(int(total) - int(claimed) for _, total, claimed in unclaimed)
                named = ", ".join(str(row[0]) for row in unclaimed[:3])
                more = f" and {len(unclaimed) - 3} more" if len(unclaimed) > 3 else ""
                raise ReceiptStoreError(
                    f"cannot open the receipt store {self._name}: it holds "
                    f"{len(unclaimed)} receipt(s) of format version 1 with {mist} MIST "
                    f"unclaimed (connections {named}{more}), which only the package they "
                    "were signed for pays and this release cannot claim (docs/escrow.md "
                    "§6): claim them with the release that wrote them first, or move the "
                    "file away",
                    self._name,
                )
            self._db.execute(f"DELETE FROM receipts WHERE {old}")

    def _check_writable(self) -> None:
        """Refuse a store that cannot be written, or a paid server would serve with every
        keep failing; a write that changes no row tells (BEGIN IMMEDIATE does not)."""
        timeout_ms = self._db.execute("PRAGMA busy_timeout").fetchone()[0]
        # Not waiting for the lock: a store another writer holds is writable, and the
        # probe waited out BUSY_TIMEOUT before saying so.
        self._db.execute("PRAGMA busy_timeout = 0")
        try:
            self._db.execute("UPDATE receipts SET nonce = nonce WHERE 0")
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # (its primary code)
            if code == sqlite3.SQLITE_READONLY:
                raise ReceiptStoreError(
                    f"cannot open the receipt store {self._name}: it is read-only ({exc}); "
                    "a paid server needs to write every receipt it counts",
                    self._name,
                ) from exc
            if code != sqlite3.SQLITE_BUSY:
                raise
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A read of the handle, refused once closed, which :meth:`close` waits for."""
        with self._reads_lock:
            self._check_open("read")
            self._reads += 1
        try:
            yield
        finally:
            with self._reads_lock:
                self._reads -= 1
                if self._closed and not self._reads:
                    self._reads_done.notify_all()  # (close() waits: see latest)

    def _check_open(self, doing: str) -> None:
        """Refuse a call on a closed store at once, saying so: sqlite3's "Cannot operate
        on a closed database" names no file, and a write that waited for :meth:`close`
        to finish would otherwise run into the closed handle."""
        if self._closed:
            raise ReceiptStoreError(
                f"cannot {doing} the receipt store {self._name}: it is closed", self._name
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (write lock held)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    # -- the receipts: kept (a newer, cumulative one, synced), claims marked, read back ----

    def keep(self, receipt: Receipt) -> bool:
        """Store ``receipt`` if it is newer (higher nonce) than the stored one and
        cumulative (an amount not lower); True when it was stored. The caller has
        already checked it."""
        connection_id = normalize_id(receipt.connection_id, "connection ID")
        # One statement: the comparison and the write cannot interleave with another
        # writer's. Nonces are u64, beyond SQLite's signed integers, so they are stored
        # as 20-digit zero-padded text, which orders exactly like the numbers.
        with self._write_lock, self._errors("write"):
            self._check_open("write")
            cursor = self._db.execute(
                _KEEP,
                (
                    connection_id,
                    _u64_text(receipt.nonce),
                    _u64_text(receipt.total_amount),
                    receipt.encode(),
                    _now_ms(),
                    self._run_id or "",
                ),
            )
        return cursor.rowcount == 1

    def keep_many(
        self, receipts: Sequence[Receipt], claimed: Mapping[str, int] | None = None
    ) -> list[bool]:
        """:meth:`keep` each of ``receipts`` and :meth:`mark_claimed` each of ``claimed``
        (connection ID -> amount, after the receipts) in one synced commit; which
        receipts were stored."""
        rows = [
            (
                normalize_id(r.connection_id, "connection ID"),
                _u64_text(r.nonce),
                _u64_text(r.total_amount),
                r.encode(),
                _now_ms(),
                self._run_id or "",
            )
            for r in receipts
        ]
        marks = [
            (_u64_text(amount), normalize_id(cid, "connection ID"))
            for cid, amount in (claimed or {}).items()
        ]
        stored = []
        with self._write_lock, self._errors("write"):
            self._check_open("write")
            with self._transaction():
                for row in rows:
                    stored.append(self._db.execute(_KEEP, row).rowcount == 1)
                if marks:
                    self._db.executemany(_MARK, marks)
        return stored

    def latest(self, connection_id: str) -> StoredReceipt | None:
        """The stored receipt of a connection, or None."""
        key = normalize_id(connection_id, "connection ID")
        # (_errors("read") and _reading() written out: a paid server reads here for each
        # connection, and each generator context manager costs about seven calls)
        try:
            with self._reads_lock:
                self._check_open("read")
                self._reads += 1
            try:
                row = self._db.execute(
                    "SELECT encoded, claimed_amount FROM receipts WHERE connection_id = ?", (key,)
                ).fetchone()
            finally:
                with self._reads_lock:
                    self._reads -= 1
                    # only close() waits here, and it sets _closed first under this lock:
                    # a read ending before never has it to wake (a paid server reads
                    # here for each connection, and notify_all is four calls)
                    if self._closed and not self._reads:
                        self._reads_done.notify_all()
        except ReceiptStoreError:
            raise
        except sqlite3.Error as exc:
            raise self._error("read", exc) from exc
        if row is None:
            return None
        return _stored(key, row[0], row[1])

    def mark_claimed(self, connection_id: str, amount: int) -> None:
        """Record that the ledger paid out up to ``amount`` (cumulative) for it."""
        self.mark_claimed_many({connection_id: amount})

    def mark_claimed_many(self, claimed: Mapping[str, int]) -> None:
        """:meth:`mark_claimed` for each connection ID -> amount, in one commit."""
        marks = [
            (_u64_text(amount), normalize_id(cid, "connection ID"))
            for cid, amount in claimed.items()
        ]
        if not marks:
            return
        with self._write_lock, self._errors("write"):
            self._check_open("write")
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                if len(marks) == 1:
                    self._db.execute(_MARK, marks[0])
                else:
                    with self._transaction():
                        self._db.executemany(_MARK, marks)
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def unclaimed(self) -> Iterator[StoredReceipt]:
        """Receipts with MIST still to claim (e.g. after a crash), oldest first."""
        return self._unclaimed("1", [])

    def _unclaimed(self, where: str, params: Sequence[object]) -> Iterator[StoredReceipt]:
        """:meth:`unclaimed` of the rows ``where`` selects."""
        with self._errors("read"), self._reading():
            rows = self._db.execute(
                "SELECT connection_id, encoded, claimed_amount FROM receipts "
                f"WHERE {where} ORDER BY updated_ms",
                params,
            ).fetchall()
        for connection_id, encoded, claimed in rows:
            try:
                stored = _stored(connection_id, encoded, claimed)
            except MalformedReceipt as exc:
                # one damaged row (a torn disk block, another program's write) stopped
                # the whole list: a restarting server claimed none of the others
                logger.error("skipping a damaged receipt in %s: %s", self._path or "memory", exc)
                continue
            if stored.unclaimed > 0:
                yield stored

    # -- the live servers, their runs' lock files, and the rows dead runs left -------------

    def attach_server(self) -> bool:
        """A paid server starts using this store; :meth:`detach_server` when it stops.
        True when no other live server uses it (a shared ``flock`` on ``<path>-lock``),
        so all its unclaimed receipts are earlier runs'; else claiming them would settle
        another server's live connections under it.

        The first server attached on this handle starts a run, whose lock file
        ``<path>-lock-<run ID>`` marks its rows as a live run's until the last detaches;
        after that (or a kill) any server recovers them (:meth:`orphaned`)."""
        with self._server_lock:
            self._servers += 1
            if self._servers > 1:
                return False
            if self._path is None or fcntl is None:
                return True
            real = self._real_path()
            lock = real.with_name(real.name + "-lock")
            try:
                # 0o600: flock needs no write access, so another user who could open it
                # read-only could hold it -- exclusively: no server started on the store
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                logger.warning("no lock file for the receipt store %s: %s", self._path, exc)
                if not os.path.lexists(lock):
                    # (a read-only directory: nothing tells the others; as it was without)
                    return True
                # Another user's (0o600): whether its server is live cannot be told.
                # Taken for alone, its live rows were claimed; this one's rows, owned by
                # no run, were an orphan's to its next start alone.
                self._start_run(real)
                return False
            try:
                make_private(fd)  # (one made before, 0o644)
                # exclusive for an instant when no one else holds it: then shared, as
                # long as this server runs (a server starting meanwhile sees it)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    alone = True
                except BlockingIOError:
                    alone = False
                self._lock_shared(fd)
            except BaseException:
                os.close(fd)
                self._servers -= 1  # (left raised, every later start thought it not alone)
                raise
            self._server_fd = fd
            self._start_run(real)
            return alone

    def _lock_shared(self, fd: int) -> None:
        """``flock(fd, LOCK_SH)``, waiting at most :data:`BUSY_TIMEOUT`: a blocking wait
        would hang a server's start for good behind a holder that does not let go."""
        assert fcntl is not None
        deadline = time.monotonic() + BUSY_TIMEOUT
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ReceiptStoreError(
                        f"cannot attach a server to the receipt store {self._name}: another "
                        f"process has held its lock file exclusively for {BUSY_TIMEOUT:g} s",
                        self._name,
                    ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def detach_server(self) -> None:
        """A server that :meth:`attach_server` stopped using the store."""
        with self._server_lock:
            if self._servers == 0:
                return
            self._servers -= 1
            if self._servers == 0:
                self._drop_server_lock()

    def _drop_server_lock(self) -> None:
        fd, self._server_fd = self._server_fd, None
        if fd is not None:
            os.close(fd)
        self._end_run()

    def _real_path(self) -> Path:
        """The store's file, symlinks resolved: every name of it finds the same locks."""
        assert self._path is not None
        try:
            return self._path.resolve()
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop
            return self._path

    def _start_run(self, real: Path) -> None:
        """A new run ID, its lock file made under another name and renamed once locked
        (else it looked dead for an instant). None in a read-only directory: the rows
        are then recovered only by a server alone on the store."""
        made = self._make_run(real)
        if made is None:
            self._run_id = None
            return
        self._run_id, self._run_fd, self._run_path = made

    def _make_run(self, real: Path) -> tuple[str, int, Path] | None:
        """A new run ID and its lock file, made and locked exclusively: (ID, fd, file);
        None (logged) when it cannot be made."""
        assert fcntl is not None
        run_id = secrets.token_hex(8)
        path = real.with_name(f"{real.name}-lock-{run_id}")
        making = real.with_name(f"{real.name}-newlock-{run_id}")
        try:
            # (0o600: held shared by another user, a dead run's lock kept it live for
            # good, its receipts never claimed)
            fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            logger.warning("no run lock file for the receipt store %s: %s", self._path, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (a new file: nobody holds it)
            os.rename(making, path)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(making)
            logger.warning("no run lock file for the receipt store %s: %s", self._path, exc)
            return None
        return run_id, fd, path

    def _end_run(self) -> None:
        """The run's servers are gone: its lock let go of, its file removed when nothing
        is left to claim (else recovered as a dead run's, later rows too)."""
        fd, self._run_fd = self._run_fd, None
        if fd is None:
            return
        if self._run_path is not None and not self._run_has_unclaimed(self._run_id):
            with contextlib.suppress(OSError):
                os.unlink(self._run_path)
        os.close(fd)

    def _run_has_unclaimed(self, run_id: str | None) -> bool:
        """Whether ``run_id``'s rows hold MIST to claim; True when that cannot be read
        (its lock file is then kept: at worst a dead run looked at once more)."""
        try:
            return self._db.execute(_UNCLAIMED_OF_RUN, (run_id,)).fetchone() is not None
        except sqlite3.Error:
            return True

    @contextlib.contextmanager
    def orphaned(self, everyone: bool = False) -> Iterator[list[StoredReceipt]]:
        """The unclaimed receipts of dead runs (whose lock file this handle could lock),
        oldest first, their locks held until the block ends so no other server claims
        them too. With ``everyone`` (:meth:`attach_server` said True), also those of no
        run (:meth:`_adopt_orphans`). A live run's rows are never listed."""
        locks, live = self._lock_dead_runs()
        try:
            if everyone:
                # (not a run that started since attach_server() said True: it is live)
                mine = [*live] if self._run_id is None else [self._run_id, *live]
                orphans = self._orphan_runs([*mine, *locks])
                if self._adopt_orphans(orphans, locks):
                    orphans = []  # (their rows are the adopted run's, in locks now)
                # Named, not "every run but mine": a run whose lock file was made after
                # the look above (a server attached since) is live, its rows too.
                params = [*locks, *orphans]
                where = f"run_id IN ({', '.join('?' * len(params))})"
            elif locks:
                where = f"run_id IN ({', '.join('?' * len(locks))})"
                params = list(locks)
            else:
                yield []
                return
            yield list(self._unclaimed(where, params))
        finally:
            self._forget_runs(locks)

    def _orphan_runs(self, owned: list[str]) -> list[object]:
        """The ``run_id`` values of unclaimed rows of no run with a lock file (not
        ``owned``), looked for after the rows were read: a run's rows name it only once
        its lock file is there, so a run that attached meanwhile is not taken for one."""
        where = f"run_id NOT IN ({', '.join('?' * len(owned))}) AND total_amount > claimed_amount"
        with self._errors("read"), self._reading():
            found = [
                row[0]
                for row in self._db.execute(
                    f"SELECT DISTINCT run_id FROM receipts WHERE {where}", owned
                ).fetchall()
            ]
        if not found or self._path is None or fcntl is None:
            return found  # (no lock files: nothing but this handle's run is live)
        real = self._real_path()
        try:
            names = set(os.listdir(real.parent))
        except OSError as exc:
            # (cannot tell a run's from an orphan's: only those no lock file can name)
            logger.warning("cannot look for run lock files beside %s: %s", real, exc)
            names = None
        return [
            run_id
            for run_id in found
            if not (isinstance(run_id, str) and _RUN_ID.fullmatch(run_id))
            or (names is not None and f"{real.name}-lock-{run_id}" not in names)
        ]

    def _adopt_orphans(self, orphans: list[object], locks: dict[str, tuple[int, Path]]) -> bool:
        """Give the unclaimed rows of ``orphans`` to a new run, dead from the start (its
        lock file joins ``locks``), so every live server's recovery tries them again
        until claimed, not only the next start alone. Whether they were."""
        if not orphans or self._path is None or fcntl is None:
            return False
        made = self._make_run(self._real_path())
        if made is None:  # (a read-only directory: listed all the same, as before)
            return False
        run_id, fd, path = made
        try:
            with self._write_lock, self._errors("write"):
                self._check_open("write")
                self._db.execute(
                    f"UPDATE receipts SET run_id = ? WHERE run_id IN "
                    f"({', '.join('?' * len(orphans))}) AND total_amount > claimed_amount",
                    [run_id, *orphans],
                )
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
            raise
        locks[run_id] = (fd, path)
        return True

    def _lock_dead_runs(self) -> tuple[dict[str, tuple[int, Path]], list[str]]:
        """Run ID -> (locked fd, lock file) of every other run whose lock file this
        handle could lock exclusively (its server is gone), and the IDs of those it
        could not (live, or being recovered by another server)."""
        live: list[str] = []
        if self._path is None or fcntl is None:
            return {}, live
        real = self._real_path()
        prefix = f"{real.name}-lock-"
        try:
            names = os.listdir(real.parent)
        except OSError as exc:
            logger.warning("cannot look for dead runs beside %s: %s", real, exc)
            return {}, live
        locks: dict[str, tuple[int, Path]] = {}
        making = f"{real.name}-newlock-"
        for name in names:
            if name.startswith(making) and _RUN_ID.fullmatch(name[len(making) :]):
                _remove_stale_newlock(real.parent / name)
                continue
            run_id = name[len(prefix) :]
            if not name.startswith(prefix) or not _RUN_ID.fullmatch(run_id):
                continue
            if run_id == self._run_id and self._run_fd is not None:
                continue  # (this handle's own, live)
            path = real.parent / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # (enough for flock)
            except FileNotFoundError:  # (removed meanwhile: recovered by another server)
                continue
            except OSError as exc:
                # Another user's (0o600): its server cannot be told dead, so its rows
                # are not claimed; taken for one removed, a start alone claimed them.
                logger.debug("cannot open the run lock file %s: %s", path, exc)
                live.append(run_id)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # (BlockingIOError: live, or another server recovers it)
                os.close(fd)
                live.append(run_id)
                continue
            locks[run_id] = (fd, path)
        return locks, live

    def _forget_runs(self, locks: dict[str, tuple[int, Path]]) -> None:
        """Let go of dead runs' locks, removing the files of those left with nothing
        to claim (their lock held: a server looking at one at the same time finds
        nothing of the run's to claim, and its own removal finds no file)."""
        for run_id, (fd, path) in locks.items():
            try:
                with self._reading():
                    done = not self._run_has_unclaimed(run_id)
            except ReceiptStoreError:  # (closed meanwhile)
                done = False
            if done:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            os.close(fd)


def _create_private(name: str) -> None:
    """Make a new store file empty and 0o600 before SQLite opens it (and its ``-wal``,
    ``-shm``, which take its mode): by the umask, every local user could read the
    receipts. One that exists keeps its mode."""
    if name in ("", ":memory:") or name.startswith("file:"):
        return
    try:
        # (resolved: O_EXCL makes nothing through a symlink, and SQLite then made the
        # missing file it names with the umask's mode)
        real = os.path.realpath(name)
        fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:  # (there already, or it cannot be made: SQLite's open says why)
        return
    os.close(fd)


def _remove_stale_newlock(path: Path) -> None:
    """Remove a ``-newlock-`` file a server killed before renaming it left, once older
    than :data:`STALE_NEWLOCK` and held by nobody (no rows name it)."""
    assert fcntl is not None
    try:
        if time.time() - os.stat(path).st_mtime < STALE_NEWLOCK:
            return
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # (enough for flock: any owner)
    except OSError:  # (renamed or removed meanwhile)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
    except OSError:  # (BlockingIOError: a server is making it now)
        return
    finally:
        os.close(fd)
    logger.info("removed %s, the lock file of a server that died starting", path)
