"""The receipt store's error handling, finished (dtp.payments.receipt_store).

- :class:`ReceiptStoreError` lives in :mod:`dtp.errors` with the other DTP errors (and
  imports from dtp.payments.receipt_store too); its opening errors name the file too.
- ``ReceiptStore.close()`` did not wait for a write in progress: it closed the handle
  under a writer thread mid-transaction, whose batch then failed and was retried against
  the closed store every second, an error logged each time, the receipt never counted.
  It now waits for the write lock; a call on a closed store raises at once, saying so.
- A guard: a receipt already stored, byte for byte, is still not "kept" again by
  another server's handle on the same file (keep() False is what refuses a receipt a
  client sends to two servers sharing one store; True would count it twice).

Real SQLite files, a real ReceiptWriter, another process holding the SQLite lock, real
ReceiptGates; no mocks."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import dtp.errors
import dtp.payments.receipt_store._store
from dtp.errors import DTPError, InvalidReceipt
from dtp.ledger._objects import Sla
from dtp.payments._gate import ReceiptGate
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments.receipt_store import ReceiptStore, ReceiptStoreError
from dtp.payments.receipts import Receipt
from tests.support.receipt_stores import CLIENT, CONN, locked_by_another_process, receipt
from tests.support.scopes import scope_of

# fee(bytes, 0) == bytes: the receipts of receipt() are priced right
SLA = Sla(price_per_kib=1024, price_per_request=0, min_deposit=1000)


def test_the_error_lives_in_dtp_errors_and_opening_errors_name_the_file(
    tmp_path: Path,
) -> None:
    assert getattr(dtp.errors, "ReceiptStoreError", None) is ReceiptStoreError
    assert issubclass(ReceiptStoreError, DTPError)
    assert issubclass(ReceiptStoreError, sqlite3.DatabaseError)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database " * 512)
    with pytest.raises(ReceiptStoreError) as raised:
        ReceiptStore(garbage)
    assert str(raised.value) == f"cannot open the receipt store {garbage}: file is not a database"
    assert raised.value.path == str(garbage)


def test_close_waits_for_the_write_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the writer's transaction waits for another process's lock as long as it takes
    # (not SQLite's busy timeout): the test, not the timeout, decides when it goes on
    monkeypatch.setattr(dtp.payments.receipt_store._store, "BUSY_TIMEOUT", 600.0)
    caplog.set_level(logging.WARNING, logger="dtp.payments._receipt_writer")
    path = tmp_path / "r.db"
    store = ReceiptStore(path)
    writer = ReceiptWriter(store)
    counted = threading.Event()
    closing = threading.Thread(target=store.close, name="closing", daemon=True)
    try:
        with locked_by_another_process(path):
            writer.submit(receipt(1, 10), lambda r: counted.set())
            # the writer is inside keep_many, waiting for the SQLite lock
            deadline = time.monotonic() + 60
            while not store._write_lock.locked() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert store._write_lock.locked()
            closing.start()
            # (time for close() to reach the handle, were it not waiting)
            closing.join(2)
        # the lock is let go: the writer's transaction commits, then close() goes on
        closing.join(60)
        assert not closing.is_alive(), "close() still waiting after the write"
        assert counted.wait(60), "the receipt being written at close() never counted"
        with ReceiptStore(path) as again:
            latest = again.latest(CONN)
            assert latest is not None and latest.receipt.nonce == 1
        assert writer.close(60)
        complaints = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert complaints == []
    finally:
        writer.close(60)
        store.close()


def test_every_call_on_a_closed_store_says_it_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "closed.db"
    store = ReceiptStore(path)
    assert store.keep(receipt(1, 10))
    store.close()
    store.close()  # (twice is fine)
    calls = {
        "keep": lambda: store.keep(receipt(2, 20)),
        "keep_many": lambda: store.keep_many([receipt(2, 20)], {CONN: 10}),
        "mark_claimed": lambda: store.mark_claimed(CONN, 10),
        "latest": lambda: store.latest(CONN),
        "unclaimed": lambda: list(store.unclaimed()),
    }
    for name, call in calls.items():
        with pytest.raises(ReceiptStoreError) as raised:
            call()
        assert str(raised.value).endswith(f"receipt store {path}: it is closed"), name
        assert raised.value.path == str(path)
        # (no SQLite error behind it: refused before the closed handle is touched)
        assert raised.value.__cause__ is None, name


def gate(store: ReceiptStore) -> ReceiptGate:
    return ReceiptGate(
        scope=scope_of(CONN),
        client_public_key=CLIENT.ed25519_public,
        sla=SLA,
        deposited=100_000,
        store=store,
    )


def test_a_receipt_stored_by_another_server_is_not_kept_again(tmp_path: Path) -> None:
    """A guard: two servers on one store file (two handles), a client sending the same
    receipt to both. Byte-for-byte the same as the stored row, it must still be refused
    by the second: counted there too, one payment covered both servers' service."""
    path = tmp_path / "shared.db"
    data = receipt(1, 500).encode()
    with ReceiptStore(path) as first, ReceiptStore(path) as second:
        assert gate(first).receive(data).nonce == 1
        other = gate(second)
        with pytest.raises(InvalidReceipt, match="already stored"):
            other.receive(data)
        assert other.latest is None and other.payable() == 0
        assert second.keep_many([Receipt.decode(data)]) == [False]
