"""A run lock file left under its making name (``<store>-newlock-<run>``) by a server
killed between making it and renaming it stayed beside the store for good. A server
looking for dead runs now removes such a file once it is older than
``STALE_NEWLOCK`` and nobody holds it; one made just now, or one a server holds
locked (it is renaming it), stays. Real files and real flock locks."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from dtp.receipt_store import STALE_NEWLOCK, ReceiptStore

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
