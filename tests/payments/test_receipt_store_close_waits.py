"""ReceiptStore.close() waits for the reads in progress and is woken as the last one
ends; a read ending with no close() waiting wakes nobody (a paid server reads the
store twice a connection, and each read notified the close's condition: four Python
calls for nothing)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from dtp.payments.receipt_store import ReceiptStore
from tests.support.counted_condition import CountedCondition
from tests.support.receipt_stores import CONN, receipt


class _HeldDb:
    """The store's SQLite connection, with its next SELECT held until :attr:`go`."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.inside = threading.Event()
        self.go = threading.Event()

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("SELECT") and not self.go.is_set():
            self.inside.set()
            assert self.go.wait(30)
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_reads_with_no_close_waiting_wake_nobody(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path / "receipts.db")
    try:
        store.keep_many([receipt(1, 10)])
        counted = CountedCondition(store._reads_done)
        store._reads_done = counted  # type: ignore[assignment]
        for _ in range(3):
            stored = store.latest(CONN)
            assert stored is not None and stored.receipt.nonce == 1
        assert counted.notified == 0
    finally:
        store.close()


def test_close_waits_for_a_read_in_progress_and_wakes_as_it_ends(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path / "receipts.db")
    store.keep_many([receipt(1, 10)])
    held = _HeldDb(store._db)
    store._db = held  # type: ignore[assignment]
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(store.latest(CONN)))
    reader.start()
    assert held.inside.wait(30)
    closer = threading.Thread(target=store.close)
    closer.start()
    deadline = time.monotonic() + 10
    while not store.closed and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.1)
    assert store.closed and closer.is_alive()  # (waiting for the read)
    held.go.set()
    reader.join(30)
    closer.join(10)  # (woken by the read's end: close() has no timeout of its own)
    assert not closer.is_alive()
    stored = got[0]
    assert stored is not None and stored.receipt.nonce == 1  # type: ignore[attr-defined]
