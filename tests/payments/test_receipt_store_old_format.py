"""A receipt store holding receipts of format version 1 (docs/escrow.md §6: bound to the
connection alone, 129 bytes encoded), as a release before version 2 left it. Those fully
claimed are dropped when the store is opened; any with MIST unclaimed make the open
refuse the store (ReceiptStoreError), the file left as it was, for the release that wrote
them to claim them: no package that claims version 2 can."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from dtp.errors import ReceiptStoreError
from dtp.payments.receipt_store import ReceiptStore
from tests.support.receipt_stores import CONN, receipt

OLD_SCHEMA = (
    "CREATE TABLE receipts (connection_id TEXT PRIMARY KEY, nonce TEXT NOT NULL, "
    "total_amount TEXT NOT NULL, encoded BLOB NOT NULL, "
    "claimed_amount TEXT NOT NULL DEFAULT '00000000000000000000', "
    "updated_ms INTEGER NOT NULL{run_id})"
)


def v1_encoding(connection_id: str, amount: int, nonce: int) -> bytes:
    """A version-1 receipt as the store held it: 0x01 || connection || four u64 || sig."""
    body = bytes.fromhex(connection_id[2:]) + b"".join(
        v.to_bytes(8, "little") for v in (amount, 0, amount, nonce)
    )
    return b"\x01" + body + hashlib.sha512(body).digest()  # (a signature's 64 bytes)


def old_store(path: Path, rows: list[tuple[str, int, int]], *, run_ids: bool = True) -> None:
    """A store file with version-1 rows (connection, amount, claimed)."""
    db = sqlite3.connect(path)
    db.execute(OLD_SCHEMA.format(run_id=", run_id TEXT NOT NULL DEFAULT ''" if run_ids else ""))
    for cid, amount, claimed in rows:
        db.execute(
            "INSERT INTO receipts (connection_id, nonce, total_amount, encoded, "
            "claimed_amount, updated_ms) VALUES (?, ?, ?, ?, ?, 1)",
            (cid, f"{1:020d}", f"{amount:020d}", v1_encoding(cid, amount, 1), f"{claimed:020d}"),
        )
    db.commit()
    db.close()


def rows(path: Path) -> list[tuple[str, bytes]]:
    db = sqlite3.connect(path)
    try:
        return [
            (str(r[0]), bytes(r[1]))
            for r in db.execute("SELECT connection_id, encoded FROM receipts ORDER BY 1")
        ]
    finally:
        db.close()


OLD_A, OLD_B = "0x" + "a1" * 32, "0x" + "b2" * 32


@pytest.mark.parametrize("run_ids", [True, False])
def test_claimed_version_1_receipts_are_dropped_and_the_store_opens(
    tmp_path: Path, run_ids: bool
) -> None:
    path = tmp_path / "r.db"
    old_store(path, [(OLD_A, 500, 500), (OLD_B, 700, 900)], run_ids=run_ids)  # all claimed
    with ReceiptStore(path) as store:
        assert store.latest(OLD_A) is None and store.latest(OLD_B) is None
        assert list(store.unclaimed()) == []
        kept = receipt(1, 100)
        assert store.keep(kept)  # and it works as any store
    assert [cid for cid, _ in rows(path)] == [CONN]
    with ReceiptStore(path) as again:
        latest = again.latest(CONN)
        assert latest is not None and latest.receipt == kept


def test_a_store_with_version_1_receipts_unclaimed_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    unpaid = [("0x" + f"{n:064x}", 1000 + n, n) for n in range(1, 6)]
    old_store(path, [(OLD_A, 500, 500), *unpaid])
    before = rows(path)
    with pytest.raises(ReceiptStoreError) as refused:
        ReceiptStore(path)
    text = str(refused.value)
    assert refused.value.path == str(path)
    assert "5 receipt(s) of format version 1" in text
    assert f"{sum(a - c for _, a, c in unpaid)} MIST unclaimed" in text
    assert unpaid[0][0] in text and "and 2 more" in text
    assert "claim them with the release that wrote them" in text
    assert rows(path) == before  # nothing dropped, not even the claimed one
    # claimed meanwhile (by the release that wrote them): the store opens
    db = sqlite3.connect(path)
    db.execute("UPDATE receipts SET claimed_amount = total_amount")
    db.commit()
    db.close()
    with ReceiptStore(path) as store:
        assert list(store.unclaimed()) == []
    assert rows(path) == []
