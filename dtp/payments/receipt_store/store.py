"""The receipt store (:class:`ReceiptStore`), made of its SQLite handle
(:mod:`~dtp.payments.receipt_store.handle`), its rows (:mod:`~dtp.payments.receipt_store.rows`)
and its servers' runs (:mod:`~dtp.payments.receipt_store.runs`); here are its opening, the
servers attaching to it and detaching, and its closing. The waits of the opening (SQLite's
busy timeout) and of a server attaching (its lock file) are bounded by :data:`BUSY_TIMEOUT`,
read here: set it on this module."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from dtp.errors import ReceiptStoreError
from dtp.identity.files import make_private
from dtp.payments.receipt_store.handle import _create_private
from dtp.payments.receipt_store.runs import ServerRuns
from dtp.payments.receipt_store.table import _OLD_COLUMNS, _SCHEMA

try:
    import fcntl
except ImportError:  # (not POSIX: no lock; one live server per store is up to the caller)
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: The longest one store call waits for another writer's lock on the file (seconds)
#: before it raises :class:`ReceiptStoreError` ("database is locked").
BUSY_TIMEOUT = 30.0


class ReceiptStore(ServerRuns):
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
        # The "claimed" marks are committed without a sync (synchronous=NORMAL for that
        # one statement): a mark lost in a crash only means that, at restart,
        # recover_unclaimed asks the ledger again, sees the connection settled and marks
        # it then (the ledger, not this mark, is what stops a double claim). Receipts
        # keep their sync on every commit, and a synced WAL commit (or checkpoint) also
        # makes the earlier frames durable, never the reverse. The same handle does both
        # (a second handle's commits can leave a read that is still open on this one
        # with a stale snapshot, and the next keep then fails as "database is locked");
        # this lock keeps every keep out while the handle is switched to NORMAL.
        self._write_lock = threading.Lock()
        # reads in progress (they take no write lock: WAL lets them run beside a write),
        # which close() waits for as it waits for the write
        self._reads = 0
        self._reads_done = threading.Condition()
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
        :class:`~dtp.payments.receipt_writer.ReceiptWriter`) stops trying them."""
        return self._closed

    def attach_server(self) -> bool:
        """A paid server starts using this store; :meth:`detach_server` when it stops.

        True when no other live server uses the store -- on this handle, another handle
        or in another process (a shared ``flock`` on the companion file
        ``<path>-lock``) -- so that its unclaimed receipts are all what earlier runs
        left, for :func:`dtp.payments.settlement.recover_unclaimed`. False when another one is
        serving: some of them are its live connections' receipts, and claiming them
        would settle those connections under it (the client refunded, the service it
        goes on giving never paid).

        The first server attached on this handle starts a run: the rows written until
        the last one detaches are the run's, and its lock file
        ``<path>-lock-<run ID>``, locked meanwhile, tells every other server that they
        belong to a live one. Once it is not (the process killed), any server recovers
        them (:meth:`orphaned`), alone on the store or not."""
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
        """``flock(fd, LOCK_SH)``, waiting at most :data:`BUSY_TIMEOUT` for an exclusive
        holder. Another server holds it for an instant; a blocking wait would hang a
        server's start (and, in the asyncio server, its event loop) for good behind a
        holder that does not let go: a process stopped in that instant, another program."""
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

    def close(self) -> None:
        """Close the store, once the write in progress (a statement or a whole
        :meth:`keep_many` transaction) and the reads in progress are done: the handle
        closed under a statement can crash the process (CPython's sqlite3 finalizes it
        while another thread runs it) or fail the write half-way, which its writer would
        then retry against the closed store for good. Every call after it raises
        :class:`ReceiptStoreError` ("closed")."""
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
