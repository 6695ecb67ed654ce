"""Durable receipt writes off the I/O path, for paid servers.

A receipt must be on disk before it counts (docs/escrow.md §6.1), and a synchronous
SQLite commit is an fsync: done where the connection is driven, it would stall reading
(and, under asyncio, the whole event loop) for as long as the disk takes. A
:class:`ReceiptWriter` thread does the writes instead; the connection keeps serving on
credit (within the allowance) meanwhile and counts a receipt once its write returns.
Only the newest receipt of a connection matters, so a newer one replaces an older one
still waiting: under load, fewer fsyncs.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from dtp.escrow import Receipt
from dtp.receipt_store import ReceiptStore

__all__ = ["ReceiptWriter"]

logger = logging.getLogger(__name__)

Done = Callable[[Receipt], None]


class ReceiptWriter:
    """One thread writing receipts to ``store``; ``done(receipt)`` runs (in that thread)
    after a receipt is stored."""

    def __init__(self, store: ReceiptStore) -> None:
        self.store = store
        self._pending: dict[str, tuple[Receipt, Done]] = {}
        self._busy: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dtp-receipts", daemon=True)
        self._thread.start()

    def submit(self, receipt: Receipt, done: Done) -> None:
        """Queue ``receipt`` (replacing an older one of its connection still waiting)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the receipt writer is closed")
            self._pending[receipt.connection_id] = (receipt, done)
            self._cond.notify_all()

    def flush(self, connection_id: str | None = None, timeout: float = 30.0) -> bool:
        """Wait until nothing (of ``connection_id``, or at all) is waiting or being
        written; False on timeout."""

        def idle() -> bool:
            if connection_id is None:
                return not self._pending and not self._busy
            return connection_id not in self._pending and connection_id not in self._busy

        with self._cond:
            return self._cond.wait_for(idle, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._closed)
                if not self._pending:
                    return  # closed and drained
                batch, self._pending = self._pending, {}
                self._busy = set(batch)
            for receipt, done in batch.values():
                try:
                    self.store.keep(receipt)
                except sqlite3.Error as exc:  # not stored, so it never counts
                    logger.error("cannot store receipt of %s: %s", receipt.connection_id, exc)
                    continue
                try:
                    done(receipt)
                except Exception:
                    logger.exception("receipt callback failed for %s", receipt.connection_id)
            with self._cond:
                self._busy = set()
                self._cond.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is waiting, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
