"""Ledger files changed behind the ledger's back in tests (another program, a damaged
disk)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import dtp.ledger.local._checkpoints as checkpoints


def damage(path: Path, statement: str, *args: object) -> None:
    """Run one SQL ``statement`` on the ledger file at ``path`` and commit it."""
    db = sqlite3.connect(path)
    try:
        db.execute(statement, args)
        db.commit()
    finally:
        db.close()


class SlowCheckpoints:
    """LocalLedger's background checkpoints made slow: each first opens its own
    connection to the file (as the real one does), calls ``hold()`` while holding it,
    then checkpoints for real. :attr:`running` is set once one holds its connection,
    :attr:`started` lists the paths they were asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold: Callable[[], object]) -> None:
        self.running = threading.Event()
        self.started: list[str] = []
        real_run = checkpoints._Checkpointer._run

        def slow_run(checkpointer: checkpoints._Checkpointer, where: str) -> None:
            self.started.append(where)
            db = sqlite3.connect(where)
            try:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                self.running.set()
                hold()
            finally:
                db.close()
            real_run(checkpointer, where)

        monkeypatch.setattr(checkpoints._Checkpointer, "_run", slow_run)
