"""Receipt stores in tests: a client's receipts, and another process holding a lock."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from dtp.identity.keys import HostIdentity
from dtp.payments.receipts import Receipt
from tests.support.scopes import scope_of

CLIENT = HostIdentity.generate()
CONN = "0x" + "5e" * 32
U64_MAX = 2**64 - 1


def receipt(nonce: int, amount: int) -> Receipt:
    return Receipt(scope_of(CONN), amount, 0, amount, nonce).sign(CLIENT)


def locked_by_another_process(path: Path) -> AbstractContextManager[None]:
    """Another process holds the write lock of the SQLite file ``path``."""
    return held_by_another_process(
        f"db = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "db.execute('BEGIN IMMEDIATE')\n"
    )


@contextmanager
def held_by_another_process(take: str) -> Iterator[None]:
    """Another process runs ``take`` (code taking a lock), then holds on until the block
    ends (for good, if the test hung)."""
    code = (
        "import fcntl, os, sqlite3, sys\n"
        f"{take}"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"  # (until the test closes its end)
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        try:
            holder.wait(60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
