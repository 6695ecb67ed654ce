"""The paid server's durable receipts against files it did not
make (dtp.payments.receipt_store, dtp.payments._receipt_writer).

- A SQLite file whose ``receipts`` table another program made opened as a store, and
  every keep failed after it ("no column named ..."): the writer retried it for good and
  no receipt ever counted. It is refused at open, as a typed error.
- SQLite's failures (a damaged file, a directory, a store locked by another process
  past the busy timeout, a closed store) came out as bare sqlite3 errors naming no file:
  they are :class:`ReceiptStoreError` (a DTPError, still a sqlite3.DatabaseError).
- A receipt submitted to the writer replaced the one of its connection still waiting
  even when that one was newer: the newer receipt was never written, the store kept
  the older one and the fees the newer one covered were lost.

Real SQLite files, other processes holding real locks; no mocks."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dtp.errors import DTPError
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments.receipt_store import BUSY_TIMEOUT, ReceiptStore, ReceiptStoreError
from dtp.payments.receipt_store import _store as store_module
from dtp.payments.receipts import Receipt
from tests.support.receipt_stores import (
    CONN,
    U64_MAX,
    held_by_another_process,
    locked_by_another_process,
    receipt,
)


@pytest.mark.parametrize(
    "table",
    [
        "CREATE TABLE receipts (a, b)",
        # the same columns, but INTEGER nonces: past 2**63 they become REALs, which no
        # longer order exactly (a newer receipt refused, an older one let in)
        "CREATE TABLE receipts (connection_id TEXT PRIMARY KEY, nonce INTEGER NOT NULL, "
        "total_amount INTEGER NOT NULL, encoded BLOB NOT NULL, "
        "claimed_amount TEXT NOT NULL DEFAULT '0', updated_ms INTEGER NOT NULL)",
        "CREATE VIEW receipts AS SELECT 1 AS x",
    ],
)
def test_a_foreign_receipts_table_is_refused_at_open(tmp_path: Path, table: str) -> None:
    path = tmp_path / "foreign.db"
    db = sqlite3.connect(path)
    db.execute(table)
    db.commit()
    db.close()
    with pytest.raises(ReceiptStoreError, match="not a receipt store") as raised:
        ReceiptStore(path)
    assert raised.value.path == str(path)
    assert isinstance(raised.value, DTPError)


def test_a_store_this_module_made_opens_again(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with ReceiptStore(path) as store:
        assert store.keep(receipt(U64_MAX, U64_MAX))
        store.mark_claimed(CONN, U64_MAX)
        store.mark_claimed(CONN, U64_MAX)  # (idempotent)
        store.mark_claimed(CONN, 1)  # (a lower mark never lowers it)
    with ReceiptStore(path) as store:
        latest = store.latest(CONN)
        assert latest is not None
        assert (latest.receipt.nonce, latest.receipt.total_amount) == (U64_MAX, U64_MAX)
        assert latest.claimed_amount == U64_MAX
        assert not store.keep(receipt(U64_MAX - 1, U64_MAX))


def test_a_damaged_file_a_directory_and_a_closed_store_are_typed_errors(
    tmp_path: Path,
) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database " * 512)
    directory = tmp_path / "a-directory"
    directory.mkdir()
    for path in (garbage, directory):
        with pytest.raises(ReceiptStoreError) as raised:
            ReceiptStore(path)
        assert raised.value.path == str(path)
        # (callers that caught sqlite3's errors still do)
        assert isinstance(raised.value, DTPError) and isinstance(raised.value, sqlite3.Error)
    store = ReceiptStore(tmp_path / "closed.db")
    store.close()
    with pytest.raises(ReceiptStoreError, match=r"cannot write the receipt store .*closed\.db"):
        store.keep(receipt(1, 10))
    with pytest.raises(ReceiptStoreError):
        store.latest(CONN)


@pytest.fixture
def short_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """BUSY_TIMEOUT (30 s) at 2 s: the bound is what is tested, not its length."""
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 2.0)


@pytest.mark.usefixtures("short_bound")
def test_a_store_locked_by_another_process_is_a_typed_error_within_its_bound(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    store = ReceiptStore(path)
    try:
        assert store.keep(receipt(1, 10))
        with locked_by_another_process(path):
            started = time.monotonic()
            with pytest.raises(ReceiptStoreError, match="locked"):
                store.keep(receipt(2, 20))
            assert time.monotonic() - started < BUSY_TIMEOUT + 60
            # reads are not held up by a writer (WAL)
            latest = store.latest(CONN)
            assert latest is not None and latest.receipt.nonce == 1
        assert store.keep(receipt(2, 20))
    finally:
        store.close()


@pytest.mark.usefixtures("short_bound")
def test_attaching_behind_a_lock_file_held_for_good_fails_within_its_bound(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    store = ReceiptStore(path)
    outcome: list[object] = []

    def attach() -> None:
        try:
            outcome.append(store.attach_server())
        except Exception as exc:
            outcome.append(exc)

    try:
        lock = f"{path}-lock"
        take = f"fd = os.open({lock!r}, os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
        with held_by_another_process(take):
            attaching = threading.Thread(target=attach, daemon=True)
            attaching.start()
            attaching.join(BUSY_TIMEOUT + 60)
            stuck = attaching.is_alive()
        attaching.join(30)  # (the lock is let go: a hung attach ends now)
        assert not stuck, "attach_server waited for good behind the lock file"
        assert len(outcome) == 1 and isinstance(outcome[0], ReceiptStoreError)
        assert "lock file" in str(outcome[0])
        # not left counted: the next start, with the lock free, is alone
        assert store.attach_server() is True
        store.detach_server()
    finally:
        store.close()


def test_the_writer_never_lets_an_older_receipt_replace_a_newer_one_waiting(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    store = ReceiptStore(path)
    writer = ReceiptWriter(store)
    counted: list[int] = []
    done = threading.Event()

    def kept(r: Receipt) -> None:
        counted.append(r.nonce)
        if r.nonce == 3:
            done.set()

    try:
        with locked_by_another_process(path):
            writer.submit(receipt(1, 10), kept)
            # the writer has taken nonce 1 and waits for the lock: what comes now waits
            deadline = time.monotonic() + 60
            while not writer._busy and time.monotonic() < deadline:
                time.sleep(0.01)
            assert writer._busy
            writer.submit(receipt(3, 30), kept)
            writer.submit(receipt(2, 20), kept)  # older, submitted after (out of order)
            latest = writer.latest(CONN)
            assert latest is not None and latest.receipt.nonce == 3
        assert writer.flush(timeout=BUSY_TIMEOUT + 60)
        assert done.wait(30)
        stored = store.latest(CONN)
        assert stored is not None and stored.receipt.nonce == 3
        assert 2 not in counted
    finally:
        assert writer.close(BUSY_TIMEOUT + 60)
        store.close()


def test_what_keep_returned_survives_a_sigkill(tmp_path: Path) -> None:
    """A guard: every receipt whose keep returned before the process was killed is in
    the store (WAL, synced commits)."""
    path = tmp_path / "r.db"
    code = (
        "import itertools\n"
        "from dtp.payments.receipts import Receipt\n"
        "from dtp.identity.keys import HostIdentity\n"
        "from dtp.payments.receipt_store import ReceiptStore\n"
        "from tests.support.scopes import scope_of\n"
        "me = HostIdentity.generate()\n"
        f"store = ReceiptStore({str(path)!r})\n"
        "for n in itertools.count(1):\n"
        f"    assert store.keep(Receipt(scope_of({CONN!r}), n, 0, n, n).sign(me))\n"
        "    print(n, flush=True)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    try:
        for line in child.stdout:
            if int(line) >= 20:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(60)
    printed = [int(line) for line in child.stdout.read().split()]
    child.stdout.close()
    last = max(printed, default=20)
    with ReceiptStore(path) as store:
        latest = store.latest(CONN)
        assert latest is not None and latest.receipt.nonce >= last
