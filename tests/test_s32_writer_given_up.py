"""A receipt write failing with an error that is not the disk's (a bug, a store that
raises something else) dropped the batch with only its connection IDs logged, and
close() said everything was written: the receipts are now given up as at close --
each logged whole, listed in ``given_up``, close() False."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from dtp.escrow import Receipt
from dtp.receipt_store import ReceiptStore
from dtp.receipt_writer import ReceiptWriter
from tests.receipt_stores import CONN, receipt


class BrokenStore(ReceiptStore):
    """A store whose receipt writes fail with a non-SQLite error."""

    def keep_many(
        self, receipts: Sequence[Receipt], claimed: Mapping[str, int] | None = None
    ) -> list[bool]:
        raise ValueError("not a disk error")


def test_a_write_failing_otherwise_gives_the_receipts_up_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="dtp.receipt_writer")
    store = BrokenStore(tmp_path / "r.db")
    writer = ReceiptWriter(store)
    kept: list[Receipt] = []
    lost = receipt(1, 10)
    try:
        writer.submit(lost, kept.append)
        assert writer.flush(timeout=30)
    finally:
        assert not writer.close(30)
        store.close()
    assert writer.given_up == (lost,)
    assert kept == []
    assert lost.encode().hex() in caplog.text
    assert f"receipt 1 of connection {CONN}" in caplog.text


def test_given_up_keeps_the_newest_receipt_of_each_connection(tmp_path: Path) -> None:
    """(A store failing every batch for as long as the writer runs: given_up grew by a
    receipt per batch, superseded ones included.)"""
    store = BrokenStore(tmp_path / "r.db")
    writer = ReceiptWriter(store)
    try:
        for nonce in range(1, 6):
            writer.submit(receipt(nonce, 10 * nonce), lambda r: None)
            assert writer.flush(timeout=30)
    finally:
        assert not writer.close(30)
        store.close()
    assert writer.given_up == (receipt(5, 50),)
