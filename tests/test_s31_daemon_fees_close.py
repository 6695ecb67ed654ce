"""The daemon's ServerFees.close() leaves the receipt store open under a writer still
writing, as a paid server's release does: it closed the store after the writer's wait
whatever the writer said, and a receipt still on its way to a slow disk was dropped
(this test failed so on the old code)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtp.daemon.fees import ServerFees
from dtp.receipt_store import ReceiptStore
from dtp.receipt_writer import ReceiptWriter
from tests.polling import wait_for
from tests.test_daemon_fees import _receipt, _setup
from tests.test_s18_paid_release import StallingStore


def test_close_leaves_the_store_open_under_a_writer_still_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, server, client, host_id, cid = _setup(tmp_path)
    fees = ServerFees(ledger, server, host_id, tmp_path / "unused.db")
    fees.writer.close()
    fees.store.close()
    store = StallingStore(tmp_path / "receipts.db")
    fees.store, fees.writer = store, ReceiptWriter(store)
    # the writer's wait, whatever the caller asks, is short here: the disk stalls longer
    real_close = ReceiptWriter.close
    monkeypatch.setattr(ReceiptWriter, "close", lambda self, timeout=30.0: real_close(self, 0.3))
    store.stall.set()
    receipt = _receipt(client, cid, 4096, 1)
    fees.writer.submit(receipt, lambda r: None)
    assert store.stalled.wait(10)
    fees.close()
    assert not store.closed  # still in use by the writer
    store.resume.set()
    assert wait_for(lambda: fees.writer.stopped, 10)
    assert store.closed  # closed by the writer's last step, once nothing writes to it
    with ReceiptStore(tmp_path / "receipts.db") as again:
        stored = again.latest(cid)
    assert stored is not None and stored.receipt == receipt
    ledger.close()
