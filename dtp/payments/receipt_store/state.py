"""What one receipt store handle holds (:class:`ReceiptStoreState`), declared once for
every part of :class:`~dtp.payments.receipt_store.store.ReceiptStore`."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class ReceiptStoreState:
    """The state of one :class:`~dtp.payments.receipt_store.store.ReceiptStore` (see its
    ``__init__`` for what each attribute holds)."""

    # the file and its handle
    _name: str
    _closed: bool
    _db: sqlite3.Connection
    _write_lock: threading.Lock
    _reads: int
    _reads_done: threading.Condition
    # the live servers using the store, and their run
    _path: Path | None
    _servers: int
    _server_fd: int | None
    _server_lock: threading.Lock
    _run_id: str | None
    _run_fd: int | None
    _run_path: Path | None
