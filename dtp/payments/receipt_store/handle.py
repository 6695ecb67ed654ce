"""A receipt store's SQLite handle (:class:`StoreHandle`): its errors as
:class:`~dtp.errors.ReceiptStoreError` naming the file, the checks that the file is a
writable receipt store, its migration, and the read and write transactions every call
runs in."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator

from dtp.errors import ReceiptStoreError
from dtp.payments.receipt_store.state import ReceiptStoreState
from dtp.payments.receipt_store.table import _COLUMNS, _OLD_COLUMNS


class StoreHandle(ReceiptStoreState):
    """The SQLite handle of :class:`~dtp.payments.receipt_store.store.ReceiptStore`."""

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """sqlite3's errors as :class:`ReceiptStoreError` naming the file (SQLite's own
        message, e.g. "database is locked", names none)."""
        try:
            yield
        except ReceiptStoreError:
            raise
        except sqlite3.Error as exc:
            error = ReceiptStoreError(
                f"cannot {doing} the receipt store {self._name}: {exc}", self._name
            )
            # (SQLite's code, e.g. SQLITE_BUSY, for callers that tell a lock from damage)
            for attr in ("sqlite_errorcode", "sqlite_errorname"):
                if hasattr(exc, attr):
                    setattr(error, attr, getattr(exc, attr))
            raise error from exc

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
        """Rows of an older receipt format (version 1: bound to the connection alone,
        docs/escrow.md §6), from a release before this one. No package that takes this
        release's receipts can claim them, and they cannot be made anew (the client
        signed them). Those fully claimed (or written off) hold nothing more: they are
        dropped. Should any still hold MIST unclaimed, the store is refused
        (:class:`ReceiptStoreError`) and the file left as it is: its owner claims them
        with the release that wrote them, against the package they were signed for, or
        moves the file away -- silently ignored, they would be lost. In one write
        transaction, as :meth:`_migrate`."""
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
        """Refuse a store that cannot be written (a read-only file, an immutable one, a
        read-only mount): it opens and reads, so a paid server would attach and serve,
        and every keep fail after it, for good (no receipt ever counted). BEGIN
        IMMEDIATE does not tell (SQLite takes the lock of a read-only file all the
        same); a write that changes no row does, before it takes any lock."""
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
        with self._reads_done:
            self._check_open("read")
            self._reads += 1
        try:
            yield
        finally:
            with self._reads_done:
                self._reads -= 1
                self._reads_done.notify_all()

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


def _create_private(name: str) -> None:
    """Make a store file that does not exist yet, empty and 0o600, before SQLite opens it
    (an empty file is a new database to it): made by SQLite, it took the umask's mode,
    and its ``-wal`` and ``-shm`` files, which SQLite gives the database's, too -- every
    local user could read every client's receipts (its usage) and the claims made. One
    that exists keeps the mode its owner gave it."""
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
