"""A receipt store's rows (:class:`ReceiptRows`): receipts kept (only a newer, cumulative
one, in one statement, committed with a sync before the call returns), claims marked, and
the receipts read back."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

from dtp.errors import MalformedReceipt
from dtp.ledger.objects import normalize_id
from dtp.ledger.receipt import Receipt
from dtp.payments.receipt_store.handle import StoreHandle
from dtp.payments.receipt_store.table import (
    _KEEP,
    _MARK,
    StoredReceipt,
    _now_ms,
    _stored,
    _u64_text,
)

logger = logging.getLogger(__name__)


class ReceiptRows(StoreHandle):
    """The receipts of :class:`~dtp.payments.receipt_store.store.ReceiptStore`."""

    def keep(self, receipt: Receipt) -> bool:
        """Store ``receipt`` if it is newer (higher nonce) than the stored one and
        cumulative (an amount not lower); True when it was stored. The caller has
        already checked it."""
        connection_id = normalize_id(receipt.connection_id, "connection ID")
        # One statement: the comparison and the write cannot interleave with another
        # writer's. Nonces are u64, beyond SQLite's signed integers, so they are stored
        # as 20-digit zero-padded text, which orders exactly like the numbers.
        with self._write_lock, self._errors("write"):
            self._check_open("write")
            cursor = self._db.execute(
                _KEEP,
                (
                    connection_id,
                    _u64_text(receipt.nonce),
                    _u64_text(receipt.total_amount),
                    receipt.encode(),
                    _now_ms(),
                    self._run_id or "",
                ),
            )
        return cursor.rowcount == 1

    def keep_many(
        self, receipts: Sequence[Receipt], claimed: Mapping[str, int] | None = None
    ) -> list[bool]:
        """:meth:`keep` each of ``receipts`` and :meth:`mark_claimed` each of ``claimed``
        (connection ID -> amount, after the receipts) in one synced commit; which
        receipts were stored."""
        rows = [
            (
                normalize_id(r.connection_id, "connection ID"),
                _u64_text(r.nonce),
                _u64_text(r.total_amount),
                r.encode(),
                _now_ms(),
                self._run_id or "",
            )
            for r in receipts
        ]
        marks = [
            (_u64_text(amount), normalize_id(cid, "connection ID"))
            for cid, amount in (claimed or {}).items()
        ]
        stored = []
        with self._write_lock, self._errors("write"):
            self._check_open("write")
            with self._transaction():
                for row in rows:
                    stored.append(self._db.execute(_KEEP, row).rowcount == 1)
                if marks:
                    self._db.executemany(_MARK, marks)
        return stored

    def latest(self, connection_id: str) -> StoredReceipt | None:
        """The stored receipt of a connection, or None."""
        key = normalize_id(connection_id, "connection ID")
        with self._errors("read"), self._reading():
            row = self._db.execute(
                "SELECT encoded, claimed_amount FROM receipts WHERE connection_id = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return _stored(key, row[0], row[1])

    def mark_claimed(self, connection_id: str, amount: int) -> None:
        """Record that the ledger paid out up to ``amount`` (cumulative) for it."""
        self.mark_claimed_many({connection_id: amount})

    def mark_claimed_many(self, claimed: Mapping[str, int]) -> None:
        """:meth:`mark_claimed` for each connection ID -> amount, in one commit."""
        marks = [
            (_u64_text(amount), normalize_id(cid, "connection ID"))
            for cid, amount in claimed.items()
        ]
        if not marks:
            return
        with self._write_lock, self._errors("write"):
            self._check_open("write")
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                if len(marks) == 1:
                    self._db.execute(_MARK, marks[0])
                else:
                    with self._transaction():
                        self._db.executemany(_MARK, marks)
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def unclaimed(self) -> Iterator[StoredReceipt]:
        """Receipts with MIST still to claim (e.g. after a crash), oldest first."""
        return self._unclaimed("1", [])

    def _unclaimed(self, where: str, params: Sequence[object]) -> Iterator[StoredReceipt]:
        """:meth:`unclaimed` of the rows ``where`` selects."""
        with self._errors("read"), self._reading():
            rows = self._db.execute(
                "SELECT connection_id, encoded, claimed_amount FROM receipts "
                f"WHERE {where} ORDER BY updated_ms",
                params,
            ).fetchall()
        for connection_id, encoded, claimed in rows:
            try:
                stored = _stored(connection_id, encoded, claimed)
            except MalformedReceipt as exc:
                # one damaged row (a torn disk block, another program's write) stopped
                # the whole list: a restarting server claimed none of the others
                logger.error("skipping a damaged receipt in %s: %s", self._path or "memory", exc)
                continue
            if stored.unclaimed > 0:
                yield stored
