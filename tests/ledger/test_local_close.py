"""LocalLedger.close() and the background checkpoints of its file."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

import dtp.ledger.local._checkpoints as checkpoints
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from tests.ledger.files import SlowCheckpoints

CLIENT = HostIdentity.from_private_bytes(bytes([0x64]) * 32, bytes([0x64]) * 32)


def test_close_waits_for_a_running_checkpoint_and_leaves_no_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() waits for a checkpoint thread still holding its connection, so that the
    close is the file's last one: no WAL (with commits in it) stays beside the file, and
    no checkpoint writes the file after close returns."""
    path = tmp_path / "ledger.sqlite"
    # a copy that takes long, holding its connection as the real one does
    slow = SlowCheckpoints(monkeypatch, lambda: time.sleep(1.0))
    ledger = LocalLedger(path)
    for _ in range(checkpoints._CHECKPOINT_EVERY):
        ledger.faucet(CLIENT.sui_address, 1)
    assert slow.running.wait(30)
    ledger.close()
    assert not os.path.exists(f"{path}-wal")
    # everything is in the database file itself
    db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        assert db.execute("SELECT count(*) FROM meta").fetchone()[0] > 0
    finally:
        db.close()
    reopened = LocalLedger(path)
    try:
        assert reopened.balance(CLIENT.sui_address) == checkpoints._CHECKPOINT_EVERY
    finally:
        reopened.close()


def test_close_again_does_not_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = LocalLedger(tmp_path / "twice.sqlite")
    ledger.close()
    waited: list[str] = []
    monkeypatch.setattr(
        checkpoints._CHECKPOINTER, "wait", lambda path, timeout: waited.append(path) or True
    )
    ledger.close()
    assert waited == []
