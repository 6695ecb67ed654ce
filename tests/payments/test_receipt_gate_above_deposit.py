"""The paid servers' receipt gate: a receipt waiting above the deposit is not undercut.

A receipt good but for the deposit the server read at admission waits aside
(``ReceiptGate.over_deposit``) until the server reads the escrow again: the client may
have topped it up. A later receipt for *less* (a client that signed for 2,100 KiB and
then for 1,200 KiB) replaced it, or was counted at once when the deposit covered it, and
the receipt for more was dropped: the server could claim only the lower amount, though
it held the client's signature on the higher one. Receipts are cumulative, so the later,
lower one is a regression: a violation, as any other regression is.
"""

from __future__ import annotations

import pytest

from dtp.errors import InvalidReceipt
from dtp.ledger._objects import Sla
from dtp.payments._gate import ReceiptGate
from dtp.payments.receipts import Receipt, fee
from tests.support.paid_twins import ident
from tests.support.scopes import scope_of

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
DEPOSIT = 20_000  # about 2 MiB of service
CID = "0x" + "ab" * 32
CLIENT = ident(0xB2)


def receipt(kib: int, nonce: int) -> bytes:
    return (
        Receipt(scope_of(CID), kib * 1024, 1, fee(SLA, kib * 1024, 1), nonce).sign(CLIENT).encode()
    )


def gate_with_one_waiting() -> ReceiptGate:
    """A gate that counted a receipt for 1,000 KiB and keeps one for 2,100 KiB (above
    the deposit) aside."""
    gate = ReceiptGate(
        scope=scope_of(CID), client_public_key=CLIENT.ed25519_public, sla=SLA, deposited=DEPOSIT
    )
    gate.escrow_id = "0x" + "cd" * 32
    gate.receive(receipt(1000, 1))
    with pytest.raises(InvalidReceipt) as above:
        gate.receive(receipt(2100, 2))
    assert above.value.name == "EReceiptExceedsDeposit"
    assert gate.violation is None
    return gate


def test_a_lower_receipt_the_deposit_covers_does_not_drop_the_waiting_one() -> None:
    gate = gate_with_one_waiting()
    with pytest.raises(InvalidReceipt) as lower:
        gate.receive(receipt(1200, 3))  # below the deposit: it was counted, silently
    assert lower.value.name == "EReceiptNotCumulative"
    assert gate.violation is not None
    assert gate.latest_amount == fee(SLA, 1000 * 1024, 1)  # not counted
    # the receipt for more is still the server's to claim once the escrow covers it
    assert gate.over_deposit is not None and gate.over_deposit.nonce == 2


def test_a_lower_receipt_above_the_deposit_does_not_take_the_waiting_ones_place() -> None:
    gate = gate_with_one_waiting()
    with pytest.raises(InvalidReceipt) as lower:
        gate.receive(receipt(2050, 3))  # above the deposit too, but below the one waiting
    assert lower.value.name == "EReceiptNotCumulative"
    assert gate.violation is not None
    assert gate.over_deposit is not None and gate.over_deposit.nonce == 2


def test_an_honest_client_that_topped_up_is_served_on() -> None:
    """Higher receipts after the one waiting are no regression: the newest waits, and is
    counted once the escrow read again covers it."""
    gate = gate_with_one_waiting()
    with pytest.raises(InvalidReceipt) as above:
        gate.receive(receipt(2400, 3))
    assert above.value.name == "EReceiptExceedsDeposit"
    assert gate.violation is None
    assert gate.over_deposit is not None and gate.over_deposit.nonce == 3
    pending = gate.deposit_read(DEPOSIT * 3)
    assert pending is not None and pending.nonce == 3
    assert gate.receive(pending.encode()).total_amount == fee(SLA, 2400 * 1024, 1)
    assert gate.violation is None
    # and one the new deposit covers at once, above the waiting one's amount, counts
    assert gate.receive(receipt(2500, 4)).total_amount == fee(SLA, 2500 * 1024, 1)
    assert gate.violation is None
