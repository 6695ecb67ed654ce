"""The daemon's settlements (dtp.daemon._fees.ServerFees.settle) and its status file.

- settle catches more than ChainError: a damaged stored receipt, an error the ledger
  did not wrap, or the writer closed under it (a settlement outlasting the stop's wait)
  stays in the settlement, its bookkeeping done (its claim counted, its close and
  settlement made), and a start's recovery goes on to the other connections;
- the claim and the settlement are one transaction (``settle_with_receipt``) and the
  mark follows it; a claim an earlier run made without its settlement is found on the
  ledger by the next start, which settles the connection: claimed once, counted once;
- status.json is synced before it is renamed into place (a power cut never leaves it
  empty).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from dtp.daemon._fees import ServerFees, Settled
from dtp.daemon._state import STATUS_FILE, StatusBook
from dtp.errors import ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, Settlement, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import ConnectionTerms, Receipt, ReceiptScope, fee
from tests.support.paid_twins import ident
from tests.support.settlements import is_settled

SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=1000)
DEPOSIT = 1_000_000
SERVER, CLIENT = ident(0x33), ident(0x34)


class _FailingLedger(LocalLedger):
    """A LocalLedger whose next claim (``claim``, or the claim and settlement of
    ``settle_with_receipt``) or ``settle`` (of the connections named in ``fail_claims``
    / ``fail_settles``) raises the error given, once."""

    fail_claims: dict[str, BaseException]
    fail_settles: dict[str, BaseException]

    def claim(self, signer: HostIdentity, escrow_id: str, receipt: Receipt) -> int:
        error = self.fail_claims.pop(receipt.connection_id, None)
        if error is not None:
            raise error
        return super().claim(signer, escrow_id, receipt)

    def settle_with_receipt(
        self,
        signer: HostIdentity,
        connection_id: str,
        receipt: Receipt,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement:
        error = self.fail_claims.pop(connection_id, None)
        if error is not None:
            raise error
        return super().settle_with_receipt(
            signer, connection_id, receipt, escrow_id=escrow_id, cap_id=cap_id
        )

    def settle(
        self,
        signer: HostIdentity,
        connection_id: str,
        *,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> Settlement:
        error = self.fail_settles.pop(connection_id, None)
        if error is not None:
            raise error
        return super().settle(signer, connection_id, escrow_id=escrow_id, cap_id=cap_id)


def _ledger(tmp_path: Path) -> tuple[_FailingLedger, str]:
    ledger = _FailingLedger(tmp_path / "ledger.db")
    ledger.fail_claims, ledger.fail_settles = {}, {}
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, 80, "raw", SLA)
    ledger.faucet(CLIENT.sui_address, 10 * DEPOSIT)
    return ledger, host_id


def _open(ledger: LocalLedger, host_id: str) -> tuple[str, str]:
    cap = ledger.create_spending_cap(CLIENT, DEPOSIT)
    opened = ledger.open_connection(CLIENT, host_id, 80, cap, DEPOSIT)
    return opened.connection_id, opened.escrow_id


def _receipt(scope: ReceiptScope, kib: int = 40) -> Receipt:
    return Receipt(scope, kib * 1024, 0, fee(SLA, kib * 1024, 0), 1).sign(CLIENT)


def _stored(fees: ServerFees, ledger: LocalLedger, *receipts: Receipt) -> None:
    """``receipts`` accepted and on disk, as the daemon keeps them."""

    async def accept() -> None:
        for receipt in receipts:
            terms = ConnectionTerms.from_ledger(ledger, receipt.connection_id)
            fees.accept(terms, receipt.encode(), lambda _: None)
        await asyncio.to_thread(fees.writer.flush)

    asyncio.run(accept())


def _unclaimed(path: Path) -> dict[str, int]:
    with ReceiptStore(path) as store:
        return {s.receipt.connection_id: s.unclaimed for s in store.unclaimed()}


def test_a_damaged_stored_receipt_is_logged_and_the_connection_left_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A MalformedReceipt from the store went up from settle (a DTPError, but no
    ChainError); settled without its receipt, the client would be refunded what it
    owes, so the connection is left as it is."""
    ledger, host_id = _ledger(tmp_path)
    cid, _ = _open(ledger, host_id)
    path = tmp_path / "receipts.db"
    fees = ServerFees(ledger, SERVER, host_id, path)
    _stored(fees, ledger, _receipt(ledger.receipt_scope(cid)))
    with sqlite3.connect(path) as db:  # a torn block, another program's write
        db.execute("UPDATE receipts SET encoded = ?", (b"not a receipt",))
    try:
        with caplog.at_level(logging.WARNING, logger="dtp.daemon._fees"):
            settled = asyncio.run(fees.settle(cid))
    finally:
        fees.close()
    assert settled == Settled(0, 0)
    assert any("damaged" in str(getattr(r, "fields", {}).get("error")) for r in caplog.records)
    tc = ledger.get_connection(cid)
    assert tc.state == ConnectionState.OPEN and not tc.settled
    ledger.close()


@pytest.mark.parametrize(
    "error", [OSError(104, "connection reset by peer"), ValueError("a bug")], ids=repr
)
def test_an_unwrapped_claim_error_does_not_end_the_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    """claim_leftovers stopped at the first connection whose claim raised something
    other than a ChainError: the start failed, and no other leftover was claimed. Now
    it is logged with its traceback, its receipt kept for the next start."""
    ledger, host_id = _ledger(tmp_path)
    first, _ = _open(ledger, host_id)
    second, _ = _open(ledger, host_id)
    path = tmp_path / "receipts.db"
    fees = ServerFees(ledger, SERVER, host_id, path)
    _stored(
        fees,
        ledger,
        _receipt(ledger.receipt_scope(first)),
        _receipt(ledger.receipt_scope(second), 80),
    )
    fees.close()

    ledger.fail_claims[first] = error
    fees = ServerFees(ledger, SERVER, host_id, path)
    try:
        with caplog.at_level(logging.WARNING, logger="dtp.daemon._fees"):
            done = dict(asyncio.run(fees.claim_leftovers()))
    finally:
        fees.close()
    assert done == {
        first: Settled(0, 0),
        second: Settled(fee(SLA, 80 * 1024, 0), DEPOSIT - fee(SLA, 80 * 1024, 0)),
    }
    failed = [r for r in caplog.records if r.getMessage() == "settle failed"]
    assert failed and failed[0].exc_info is not None and failed[0].exc_info[1] is error
    assert _unclaimed(path) == {first: fee(SLA, 40 * 1024, 0)}  # kept for the next start
    assert ledger.get_connection(first).state == ConnectionState.OPEN
    assert is_settled(ledger, second)
    ledger.close()


@pytest.mark.parametrize(
    "error",
    [ChainError("ledger RPC timed out", name="Timeout", module="sui"), OSError(110, "timed out")],
    ids=["ChainError", "OSError"],
)
def test_a_failed_settlement_leaves_everything_for_the_next_start(
    tmp_path: Path, error: Exception
) -> None:
    """The claim and the settlement are one transaction: one that fails claims nothing
    and settles nothing, the receipt stays unclaimed in the store, and the next start
    claims and settles it, once."""
    ledger, host_id = _ledger(tmp_path)
    cid, escrow_id = _open(ledger, host_id)
    receipt = _receipt(ledger.receipt_scope(cid))
    path = tmp_path / "receipts.db"
    fees = ServerFees(ledger, SERVER, host_id, path)
    _stored(fees, ledger, receipt)
    ledger.fail_claims[cid] = error
    try:
        first = asyncio.run(fees.settle(cid))
    finally:
        fees.close()
    assert first == Settled(0, 0) and not first.done
    assert ledger.get_escrow(escrow_id).claimed == 0
    assert not is_settled(ledger, cid)
    assert _unclaimed(path) == {cid: receipt.total_amount}

    fees = ServerFees(ledger, SERVER, host_id, path)  # the next start
    try:
        done = asyncio.run(fees.claim_leftovers())
    finally:
        fees.close()
    assert done == [(cid, Settled(receipt.total_amount, DEPOSIT - receipt.total_amount))]
    escrow = ledger.get_escrow(escrow_id)
    assert escrow.claimed == receipt.total_amount and escrow.settled
    assert _unclaimed(path) == {}
    ledger.close()


def test_a_claim_an_earlier_run_made_without_its_settlement_is_settled_at_the_next_start(
    tmp_path: Path,
) -> None:
    """A run claimed (a separate ``claim``, as a daemon before one-transaction ends did,
    or ``dtp claim`` without ``--settle``) and ended before the settlement, the receipt
    not marked. The next start settles the connection without claiming again: its claim
    found on the ledger, counted by the run that made it, not again."""
    ledger, host_id = _ledger(tmp_path)
    cid, escrow_id = _open(ledger, host_id)
    receipt = _receipt(ledger.receipt_scope(cid))
    path = tmp_path / "receipts.db"
    fees = ServerFees(ledger, SERVER, host_id, path)
    _stored(fees, ledger, receipt)
    fees.close()
    assert ledger.claim(SERVER, escrow_id, receipt) == receipt.total_amount

    fees = ServerFees(ledger, SERVER, host_id, path)  # the next start
    try:
        done = asyncio.run(fees.claim_leftovers())
    finally:
        fees.close()
    assert done == [(cid, Settled(0, DEPOSIT - receipt.total_amount))]  # not counted again
    tc = ledger.get_connection(cid)
    assert tc.settled and tc.state == ConnectionState.CLOSED
    escrow = ledger.get_escrow(escrow_id)
    assert escrow.claimed == receipt.total_amount  # claimed once
    assert escrow.refunded == DEPOSIT - receipt.total_amount
    assert _unclaimed(path) == {}  # the start after has nothing to do
    ledger.close()


def test_a_settlement_outlasting_the_writer_still_settles_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer closed under a settlement (the stop's wait for the handlers is over):
    its claimed mark raised RuntimeError right after the claim, so the connection was
    neither closed nor settled and the claim was not counted."""
    ledger, host_id = _ledger(tmp_path)
    cid, _ = _open(ledger, host_id)
    receipt = _receipt(ledger.receipt_scope(cid))
    fees = ServerFees(ledger, SERVER, host_id, tmp_path / "receipts.db")
    _stored(fees, ledger, receipt)
    fees.writer.close()
    try:
        with caplog.at_level(logging.WARNING):
            settled = asyncio.run(fees.settle(cid))
    finally:
        fees.store.close()
    assert settled == Settled(receipt.total_amount, DEPOSIT - receipt.total_amount)
    assert is_settled(ledger, cid)
    assert any("is not marked in the receipt store" in r.getMessage() for r in caplog.records)
    ledger.close()


def test_the_status_file_is_synced_before_and_after_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renamed unsynced, a power cut could leave status.json empty: `dtp status` called
    it damaged, and the next start lost every cumulative counter."""
    book = StatusBook(tmp_path)
    book.service("svc").fees_claimed = 1234
    target = tmp_path.resolve() / STATUS_FILE
    steps: list[tuple[str, str]] = []
    synced: list[bytes] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        where = os.readlink(f"/proc/self/fd/{fd}")
        steps.append(("fsync", "dir" if where == str(tmp_path.resolve()) else "file"))
        if where != str(tmp_path.resolve()):
            synced.append(Path(where).read_bytes())
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        steps.append(("replace", str(Path(dst).resolve())))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    book.save(force=True)
    monkeypatch.undo()
    assert steps == [("fsync", "file"), ("replace", str(target)), ("fsync", "dir")]
    assert synced == [target.read_bytes()]  # the whole file, synced before its rename
    assert StatusBook.open(tmp_path).services["svc"].fees_claimed == 1234
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATUS_FILE]  # no temp left
