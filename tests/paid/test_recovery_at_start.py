"""A paid server's start-up recovery (``recover_unclaimed`` without a
backoff) let any exception but ChainError and ReceiptStoreError out of one receipt's
claim -- a ledger's surprise (a value it should not return), a bug -- which ended the
recovery, so the receipts after it went unclaimed and the server did not start, on
every restart alike. The live rounds (with a backoff) already logged such a failure
with its traceback and went on; the start now does the same."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from dtp.chain.local import LocalLedger
from dtp.receipt_store import ReceiptStore
from dtp.settlement import recover_unclaimed
from tests.paid.test_receipt_writer_close import SERVER, World, world  # noqa: F401 (fixture)


class _Surprising:
    """The real ledger, whose reads of one connection raise what no ledger should."""

    def __init__(self, ledger: LocalLedger, cid: str) -> None:
        self._ledger = ledger
        self._cid = cid

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def get_connection(self, connection_id: str) -> Any:
        if connection_id == self._cid:
            raise ValueError("a TransportControl with a field out of range")
        return self._ledger.get_connection(connection_id)


def test_the_start_recovery_goes_on_past_a_surprising_failure(
    world: World,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with ReceiptStore(tmp_path / "r.db") as store:
        opened = [world.open(store) for _ in range(3)]
        bad = opened[0].cid
        ledger = _Surprising(world.ledger, bad)
        with caplog.at_level(logging.ERROR):
            recovered = recover_unclaimed(ledger, SERVER, store)  # type: ignore[arg-type]
        assert sorted(cid for cid, _ in recovered) == sorted(o.cid for o in opened[1:])
        for o in opened[1:]:
            assert world.ledger.get_connection(o.cid).settled
        assert not world.ledger.get_connection(bad).settled
        assert bad in caplog.text and "field out of range" in caplog.text
        assert any(r.exc_info for r in caplog.records), "logged without its traceback"
        # still unclaimed in the store: tried again at the next start or round
        assert [s.receipt.connection_id for s in store.unclaimed()] == [bad]
