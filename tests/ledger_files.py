"""Ledger files changed behind the ledger's back in tests (another program, a damaged
disk)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def damage(path: Path, statement: str, *args: object) -> None:
    """Run one SQL ``statement`` on the ledger file at ``path`` and commit it."""
    db = sqlite3.connect(path)
    try:
        db.execute(statement, args)
        db.commit()
    finally:
        db.close()
