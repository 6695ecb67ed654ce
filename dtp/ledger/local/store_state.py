"""What one local ledger handle holds (:class:`StoreState`), declared once for every part
of :class:`~dtp.ledger.local.store.LocalStore`."""

from __future__ import annotations

import itertools
import sqlite3
import threading


class StoreState:
    """The state of one :class:`~dtp.ledger.local.store.LocalStore` handle."""

    path: str
    """The ledger file, or ``":memory:"``."""
    _real_path: str
    """The file's real path, resolved once: the key of its background checkpoints."""
    _lock: threading.RLock
    """Held around every SQLite transaction of this handle (threads share it)."""
    _changed: threading.Condition
    """Notified after every commit (waiters for events)."""
    _commits: int
    """Commits of this handle, for the background checkpoints' cadence."""
    _nonce_counter: itertools.count[int]
    """The nonces of the transactions this handle builds."""
    _clock_served: tuple[str, int]
    """(clock_offset, ms): the latest wall-mode time this handle read (see _now)."""
    _db: sqlite3.Connection
    """The handle's SQLite connection (a stand-in once closed, or in a forked child)."""
    _package_id: str
    """The file's package ID, read as the file is opened (LocalStore._init_schema): the
    package the rules run as, which receipts name (docs/escrow.md §6)."""
