"""The server's durable record of what it has earned: the latest valid receipt of
every connection, in SQLite.

A receipt is kept only after :func:`dtp.payments.receipts.check_receipt` accepted it, and only
if its nonce is higher than the one stored and its amount not lower (one atomic
statement, so concurrent writers cannot go backwards). Every write is committed
before :meth:`ReceiptStore.keep` returns: a crash right after it loses no earned fee.
After a restart, :meth:`ReceiptStore.unclaimed` lists what is still to be claimed on the
ledger.

Every SQLite failure (a file that is not this store's database, a directory, a store
locked by another writer past :data:`BUSY_TIMEOUT`, a full disk) is raised as a
:class:`~dtp.errors.ReceiptStoreError` naming the file, and so is any call on a closed
store.
"""

from __future__ import annotations

from dtp.errors import ReceiptStoreError
from dtp.payments.receipt_store._store import BUSY_TIMEOUT, STALE_NEWLOCK, ReceiptStore
from dtp.payments.receipt_store._table import StoredReceipt

__all__ = ["BUSY_TIMEOUT", "STALE_NEWLOCK", "ReceiptStore", "ReceiptStoreError", "StoredReceipt"]
