"""The ``receipts`` table: its schema, the statements that keep and mark receipts, and
a row as stored (:class:`StoredReceipt`: u64s as 20-digit text, which orders exactly
like the numbers)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from dtp.errors import MalformedReceipt
from dtp.ledger.receipt import Receipt

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    connection_id TEXT PRIMARY KEY,
    nonce TEXT NOT NULL,
    total_amount TEXT NOT NULL,
    encoded BLOB NOT NULL,
    claimed_amount TEXT NOT NULL DEFAULT '00000000000000000000',
    updated_ms INTEGER NOT NULL,
    run_id TEXT NOT NULL DEFAULT ''
)
"""

# The receipts table as _SCHEMA makes it (name, declared type): a file whose table has
# another shape is another program's, or one this module cannot write correctly (an
# INTEGER column turns nonces past 2**63 into REALs, which no longer order exactly).
_COLUMNS = [
    ("connection_id", "TEXT"),
    ("nonce", "TEXT"),
    ("total_amount", "TEXT"),
    ("encoded", "BLOB"),
    ("claimed_amount", "TEXT"),
    ("updated_ms", "INTEGER"),
    ("run_id", "TEXT"),
]
# The table before its rows had owners (run_id): such a file is migrated in place, its
# rows owned by no run (recovered only by a server alone on the store, as before).
_OLD_COLUMNS = _COLUMNS[:-1]


# One statement: the comparison and the write cannot interleave with another writer's.
# A newer receipt (higher nonce) replaces the stored one only if it is cumulative (an
# amount not lower): a lower one, from a client that signed it after a higher one, would
# throw away what the higher one lets the server claim for service already given.
_KEEP = (
    "INSERT INTO receipts (connection_id, nonce, total_amount, encoded, updated_ms, run_id) "
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(connection_id) DO UPDATE SET nonce = excluded.nonce, "
    "total_amount = excluded.total_amount, encoded = excluded.encoded, "
    "updated_ms = excluded.updated_ms, run_id = excluded.run_id "
    "WHERE excluded.nonce > receipts.nonce "
    "AND excluded.total_amount >= receipts.total_amount"
)
_MARK = "UPDATE receipts SET claimed_amount = MAX(claimed_amount, ?) WHERE connection_id = ?"
# (both columns are 20-digit text: compared as text, they compare as the numbers)
_UNCLAIMED_OF_RUN = (
    "SELECT 1 FROM receipts WHERE run_id = ? AND total_amount > claimed_amount LIMIT 1"
)


@dataclass(frozen=True)
class StoredReceipt:
    """The latest receipt of a connection and how much of it was already claimed (all of
    it once its connection was settled without it: nothing more can be claimed, the
    rest was written off)."""

    receipt: Receipt
    claimed_amount: int

    @property
    def unclaimed(self) -> int:
        # a claim may exceed the stored receipt: the settlement claimed a newer one it
        # was never written before (the receipt a client's CLOSE came with)
        return max(0, self.receipt.total_amount - self.claimed_amount)


def _stored(connection_id: object, encoded: object, claimed: object) -> StoredReceipt:
    """A row as read; :class:`MalformedReceipt` when it is not one this module wrote."""
    try:
        if not isinstance(encoded, bytes) or not isinstance(claimed, (str, int)):
            raise ValueError("wrong column types")
        receipt = Receipt.decode(encoded)
        amount = int(claimed)  # (text as written; a number if another program wrote one)
        if not 0 <= amount < 2**64 or receipt.connection_id != connection_id:
            raise ValueError("its fields disagree")
    except (ValueError, MalformedReceipt) as exc:
        raise MalformedReceipt(
            f"the stored receipt of connection {connection_id!r} is damaged: {exc}"
        ) from None
    return StoredReceipt(receipt, amount)


def _u64_text(value: int) -> str:
    if not 0 <= value < 2**64:
        raise ValueError(f"{value} is not a u64")
    return f"{value:020d}"


def _now_ms() -> int:
    return int(time.time() * 1000)
