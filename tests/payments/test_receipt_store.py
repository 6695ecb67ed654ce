"""The server's receipt store: newest wins, survives restarts, lists what is unclaimed.

A run lock file left under its making name (``<store>-newlock-<run>``) by a server
killed between making it and renaming it stayed beside the store for good. A server
looking for dead runs now removes such a file once it is older than
``STALE_NEWLOCK`` and nobody holds it; one made just now, or one a server holds
locked (it is renaming it), stays. Real files and real flock locks."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.receipt_store import STALE_NEWLOCK, ReceiptStore
from dtp.payments.receipts import Receipt, fee
from tests.support.scopes import scope_of

CLIENT = HostIdentity.generate()
SLA = Sla(10, 5, 1000)
CONN = "0x" + "c0" * 32
OTHER = "0x" + "0d" * 32


def receipt(nonce: int, nbytes: int, requests: int = 0, conn: str = CONN) -> Receipt:
    return Receipt(scope_of(conn), nbytes, requests, fee(SLA, nbytes, requests), nonce).sign(CLIENT)


def test_newest_nonce_wins_and_older_is_refused(tmp_path: Path) -> None:
    with ReceiptStore(tmp_path / "r.sqlite") as store:
        assert store.latest(CONN) is None
        assert store.keep(receipt(2, 2048))
        assert not store.keep(receipt(1, 4096))  # older nonce: refused
        assert not store.keep(receipt(2, 9999))  # same nonce: refused
        assert store.keep(receipt(10, 10240))
        latest = store.latest(CONN)
        assert latest is not None and latest.receipt.nonce == 10
        assert latest.receipt.verify(CLIENT.ed25519_public)


def test_u64_nonces_order_numerically() -> None:
    store = ReceiptStore()
    assert store.keep(receipt(9, 1))
    assert store.keep(receipt(10, 2))  # 10 > 9 although "10" < "9" as plain text
    assert store.keep(receipt(2**64 - 1, 3))
    assert not store.keep(receipt(2**63, 4))
    latest = store.latest(CONN)
    assert latest is not None and latest.receipt.nonce == 2**64 - 1


def test_survives_restart_and_lists_unclaimed(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ReceiptStore(path) as store:
        store.keep(receipt(3, 10240, 4))
        store.keep(receipt(1, 1024, conn=OTHER))
        store.mark_claimed(OTHER, fee(SLA, 1024, 0))
    # a fresh process sees what the first one kept
    code = (
        "from dtp.payments.receipt_store import ReceiptStore\n"
        f"s = ReceiptStore({str(path)!r})\n"
        "print([(r.receipt.nonce, r.unclaimed) for r in s.unclaimed()])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"[(3, {fee(SLA, 10240, 4)})]"


RUN = "0123456789abcdef"


def _making(store_path: Path, run: str = RUN, age: float = 0.0) -> Path:
    path = store_path.with_name(f"{store_path.name}-newlock-{run}")
    path.touch()
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def _look_for_dead_runs(store: ReceiptStore) -> None:
    with store.orphaned() as receipts:
        assert receipts == []


def test_a_dead_servers_stale_newlock_file_is_removed(tmp_path: Path) -> None:
    db = tmp_path / "receipts.db"
    stale = _making(db, age=STALE_NEWLOCK + 5)
    store = ReceiptStore(db)
    try:
        store.attach_server()
        _look_for_dead_runs(store)
        assert not stale.exists()
        # the server's own lock file, and the store, are untouched
        assert db.exists()
        assert len(list(tmp_path.glob("receipts.db-lock-*"))) == 1
    finally:
        store.detach_server()
        store.close()


def test_a_fresh_or_held_newlock_file_stays(tmp_path: Path) -> None:
    db = tmp_path / "receipts.db"
    fresh = _making(db, "00000000000000aa")
    held = _making(db, "00000000000000bb", age=STALE_NEWLOCK + 5)
    other = tmp_path / "receipts.db-newlock-not-a-run"  # (not a run ID: not ours)
    other.touch()
    os.utime(other, (0, 0))
    fd = os.open(held, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a server renaming it now
    store = ReceiptStore(db)
    try:
        store.attach_server()
        _look_for_dead_runs(store)
        assert fresh.exists() and held.exists() and other.exists()
        os.close(fd)
        fd = -1
        _look_for_dead_runs(store)
        assert not held.exists() and fresh.exists()
    finally:
        if fd >= 0:
            os.close(fd)
        store.detach_server()
        store.close()
