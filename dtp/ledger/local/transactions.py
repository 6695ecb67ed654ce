"""The local ledger's transactions around SQLite (:class:`SqliteTransactions`): a whole
transaction retried while another writer holds the file, read and write transactions,
and the ledger's meta values read and written inside them."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from typing import Final, TypeVar

from dtp.errors import LedgerUnavailable
from dtp.ledger.local import rules
from dtp.ledger.local.checkpoints import _CHECKPOINT_EVERY, _CHECKPOINTER
from dtp.ledger.local.store_state import StoreState

#: How long a call waits for another writer (any process) to finish before failing.
_BUSY_TIMEOUT_S: Final = 30.0
# Waits between tries while another writer holds the file. SQLite's own busy handler
# sleeps 1, 2, 5, 10... ms, which is long next to the sub-millisecond transactions
# here: two processes taking turns (a client opening while its server settles) would
# wait a millisecond or more for a lock that is free after a fraction of that. So the
# tries come every _FIRST_BACKOFF_S for as long as one other transaction could hold the
# lock (_STEADY_BACKOFF_S), and only then further and further apart.
_FIRST_BACKOFF_S: Final = 0.0001
_STEADY_BACKOFF_S: Final = 0.002
_MAX_BACKOFF_S: Final = 0.005

# Upserts, not INSERT OR REPLACE: REPLACE deletes the row and inserts it again under a
# new rowid, dirtying the table's and the key index's pages; an in-place update dirties
# one page, so each transaction's commit writes fewer WAL frames.
_UPSERT_META: Final = (
    "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)
_UPSERT_BALANCE: Final = (
    "INSERT INTO balances VALUES (?, ?) ON CONFLICT(address) DO UPDATE SET amount = excluded.amount"
)

_META_DEFAULTS: Final = {
    "epoch": "0",
    "minted": "0",
    "clock_frozen": "0",
    "clock_ms": "0",
    "clock_offset": "0",
    "clock_floor": "0",
}

T = TypeVar("T")


def _unavailable(message: str) -> LedgerUnavailable:
    return LedgerUnavailable(message, module="ledger")


class _LedgerLocked(LedgerUnavailable, sqlite3.OperationalError):
    """Another writer held the file past the busy timeout: LedgerUnavailable like every
    failure of the file, and still the sqlite3.OperationalError ("database is locked")
    callers caught before it was typed."""


class SqliteTransactions(StoreState):
    """The transactions of :class:`~dtp.ledger.local.store.LocalStore` around SQLite: every
    call runs as one of them."""

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, again while another connection holds the database (up to
        _BUSY_TIMEOUT_S); ``fn`` is a whole transaction, so a retry starts it afresh."""
        delay = _FIRST_BACKOFF_S
        deadline: float | None = None
        while True:
            try:
                return fn()
            except rules.DamagedData as exc:
                # typed already; worded here to name the file, as the other failures are
                if exc.ledger is not None:
                    raise
                raise self._damaged(exc) from exc
            except sqlite3.DatabaseError as exc:
                message = str(exc).lower()
                if "malformed json" in message:
                    # SQLite's json_extract (connection_view) met data that does not parse
                    damaged = rules.DamagedData(f"stored data does not parse ({exc})")
                    raise self._damaged(damaged) from exc
                if not isinstance(exc, sqlite3.OperationalError) or (
                    "locked" not in message and "busy" not in message
                ):
                    # the file itself failed (damaged, truncated, disk full, read-only):
                    # typed and naming it, as at open
                    raise _unavailable(f"the ledger {self.path} failed: {exc}") from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + _BUSY_TIMEOUT_S
                elif now >= deadline:
                    raise _LedgerLocked(
                        f"the ledger {self.path} stayed locked by another writer for "
                        f"{_BUSY_TIMEOUT_S:g} s (database is locked)",
                        module="ledger",
                    ) from exc
                if getattr(exc, "sqlite_errorname", "") == "SQLITE_BUSY_SNAPSHOT":
                    continue  # another writer committed since our reads: again, at once
                time.sleep(delay * (0.5 + random.random()))
                if now > deadline - _BUSY_TIMEOUT_S + _STEADY_BACKOFF_S:
                    delay = min(delay * 2, _MAX_BACKOFF_S)

    def _damaged(self, exc: rules.DamagedData) -> rules.DamagedData:
        """``exc`` worded to name this ledger's file (still DamagedData, so callers can
        tell a damaged row from a file that cannot be opened or stays locked)."""
        named = rules.DamagedData(f"the ledger {self.path} failed: {exc}")
        named.ledger = self.path
        return named

    def _write(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; roll back on any error."""
        return self._retry(lambda: self._transaction("BEGIN IMMEDIATE", fn))

    def _transaction(self, begin: str, fn: Callable[[], T]) -> T:
        """One attempt: ``fn`` between ``begin`` and COMMIT under the handle's lock,
        rolled back on any error (:meth:`_retry` decides whether to try again)."""
        with self._lock:
            self._db.execute(begin)
            try:
                result = fn()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._committed()
            return result

    def _committed(self) -> None:
        """After a commit (lock held): wake waiters for events, and now and then ask for a
        checkpoint."""
        self._changed.notify_all()
        self._commits += 1
        if self._commits % _CHECKPOINT_EVERY == 0 and self.path != ":memory:":
            _CHECKPOINTER.request(self._real_path)

    def _read(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in one read transaction (a consistent snapshot)."""

        def attempt() -> T:
            with self._lock:
                self._db.execute("BEGIN")
                try:
                    return fn()
                finally:
                    self._db.execute("COMMIT")

        return self._retry(attempt)

    def _read_one(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, which reads with a single statement: that statement is a
        transaction of its own (autocommit), so no BEGIN and COMMIT around it."""

        def attempt() -> T:
            with self._lock:
                return fn()

        return self._retry(attempt)

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else _META_DEFAULTS[key]

    def _metas(self) -> dict[str, str]:
        """Every meta value (one statement; missing keys have their defaults)."""
        return {**_META_DEFAULTS, **dict(self._db.execute("SELECT key, value FROM meta"))}

    def _set_meta(self, key: str, value: int | str) -> None:
        self._db.execute(_UPSERT_META, (key, str(value)))
